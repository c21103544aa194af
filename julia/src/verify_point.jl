# One robustness query: is there a point within eps of x (in the p-norm, inside [0, 1]) that
# the network classifies as anything but `label`?
#
# MIPVerify's perturbation family is always LInfNormBoundedPerturbationFamily(eps): the box
# [x - eps, x + eps] intersected with [0, 1]. It contains the L1 and L2 balls of radius eps,
# so an INFEASIBLE answer proves robustness for every p, and its small box keeps the
# bound tightening tight.
#
# - p = Inf, objective "worst": maximise max_{j != label} f_j - f_label subject to it being
#   >= 0. INFEASIBLE proves robustness; the objective and its bound are the violation and an
#   upper bound on it (minus that bound is the Verdict's margin_lb in verify.mip.mipverify).
# - p = 1 or 2, objective "closest": minimise ||x' - x||_p (for p = 2 MIPVerify minimises the
#   squared norm) over adversarial x' in the box. A proven lower bound above eps (eps^2 for
#   p = 2) proves robustness for the ball; a solution within eps is a candidate counterexample.
#
# The verdict is taken in Python (verify/mip/mipverify.py), which re-checks every candidate
# in float64; this function only reports what the solver said.

const TIGHTENING = Dict(
    "interval_arithmetic" => MIPVerify.interval_arithmetic,
    "lp" => MIPVerify.lp,
    "mip" => MIPVerify.mip,
)
const OBJECTIVES = Dict("closest" => MIPVerify.closest, "worst" => MIPVerify.worst)

"""
    forward_logits(spec, x) -> Vector{Float64}

The logits MIPVerify computes for one input `x`, flattened in C order over (C, H, W).
"""
function forward_logits(spec::ModelSpec, x::AbstractVector{<:Real})::Vector{Float64}
    return collect(Float64, spec.net(chw_to_mipverify(x, spec.input_shape)))
end
forward_logits(path::AbstractString, x::AbstractVector{<:Real}) = forward_logits(read_network(path), x)

"""
    verify_point(model, x, label, eps; p=Inf, objective="auto", tightening="lp",
                 time_limit=120.0, tightening_time_limit=20.0, optimizer="highs",
                 solve_if_misclassified=false) -> NamedTuple

`model` is a path to relu-verify's MIPVerify-layout `.mat` or a [`ModelSpec`](@ref); `x` is the
input flattened in C order over (C, H, W); `label` is 0-based (as in Python). Returns
`(solved, termination, infeasible, has_solution, objective, dual_bound, gap, perturbed,
predicted, solve_time, total_time, n_binaries, objective_kind, norm_order)` with `perturbed`
flattened like `x` (empty without a solution), `predicted` 0-based, and NaN for missing numbers.
"""
function verify_point(model::AbstractString, x::AbstractVector{<:Real}, label::Integer, eps::Real; kwargs...)
    return verify_point(read_network(model), x, label, eps; kwargs...)
end

function verify_point(
    spec::ModelSpec,
    x::AbstractVector{<:Real},
    label::Integer,
    eps::Real;
    p::Real = Inf,
    objective::AbstractString = "auto",
    tightening::AbstractString = "lp",
    time_limit::Real = 120.0,
    tightening_time_limit::Real = 20.0,
    optimizer::AbstractString = "highs",
    solve_if_misclassified::Bool = false,
)
    p in (1, 2, Inf) || throw(ArgumentError("p must be 1, 2 or Inf, got $(p)"))
    eps > 0 || throw(ArgumentError("eps must be > 0 (MIPVerify's perturbation family asserts it), got $(eps)"))
    0 <= label < spec.n_classes || throw(ArgumentError("label $(label) is not a class of this $(spec.n_classes)-class network"))
    kind = objective == "auto" ? (isinf(p) ? "worst" : "closest") : String(objective)
    haskey(OBJECTIVES, kind) || throw(ArgumentError("objective must be auto, worst or closest, got $(repr(objective))"))
    # "worst" searches the whole Linf box, which is larger than an L1 or L2 ball.
    kind == "worst" && !isinf(p) && throw(ArgumentError("the worst objective answers Linf queries only; use closest for p = $(p)"))
    haskey(TIGHTENING, tightening) ||
        throw(ArgumentError("tightening must be interval_arithmetic, lp or mip, got $(repr(tightening))"))
    p == 2 && optimizer == "highs" &&
        throw(ArgumentError("p = 2 needs a mixed-integer QP solver (Gurobi); HiGHS solves mixed-integer LPs only"))
    settings = optimizer_settings(optimizer, time_limit, tightening_time_limit)
    input = chw_to_mipverify(x, spec.input_shape)
    pp = MIPVerify.LInfNormBoundedPerturbationFamily(Float64(eps))
    # invokelatest: Gurobi may have been loaded during this call (a newer world age).
    return Base.invokelatest(
        run_query, spec, input, Int(label), pp, Float64(p), kind, TIGHTENING[tightening], settings, solve_if_misclassified,
    )
end

function safe_number(f::Function)::Float64
    try
        v = f()
        return v isa Real ? Float64(v) : NaN
    catch
        return NaN
    end
end

function run_query(
    spec::ModelSpec,
    input::Array{Float64},
    label::Int,
    pp,
    p::Float64,
    kind::String,
    tightening,
    settings::OptimizerSettings,
    solve_if_misclassified::Bool,
)
    d = MIPVerify.find_adversarial_example(
        spec.net,
        input,
        label + 1,  # MIPVerify's classes are 1-based
        settings.optimizer,
        settings.main_options;
        invert_target_selection = true,  # targets: every class but the true one
        pp = pp,
        norm_order = isinf(p) ? Inf : Int(p),
        adversarial_example_objective = OBJECTIVES[kind],
        tightening_algorithm = tightening,
        tightening_options = settings.tightening_options,
        solve_if_predicted_in_targeted = solve_if_misclassified,
    )
    predicted = Int(d[:PredictedIndex]) - 1
    total_time = Float64(get(d, :TotalTime, NaN))
    if !haskey(d, :SolveStatus)
        # The clean input is already misclassified and no model was built: it is its own
        # candidate counterexample.
        return (
            solved = false, termination = "NOT_SOLVED", infeasible = false, has_solution = true,
            objective = NaN, dual_bound = NaN, gap = NaN, perturbed = mipverify_to_chw(input),
            predicted = predicted, solve_time = 0.0, total_time = total_time, n_binaries = 0,
            objective_kind = kind, norm_order = p,
        )
    end
    m = d[:Model]
    status = JuMP.termination_status(m)
    has_solution = JuMP.primal_status(m) == JuMP.MOI.FEASIBLE_POINT
    perturbed = has_solution ? mipverify_to_chw(JuMP.value.(d[:PerturbedInput])) : Float64[]
    return (
        solved = true,
        termination = string(status),
        infeasible = status == JuMP.MOI.INFEASIBLE,
        has_solution = has_solution,
        objective = has_solution ? safe_number(() -> JuMP.objective_value(m)) : NaN,
        dual_bound = safe_number(() -> JuMP.objective_bound(m)),
        gap = safe_number(() -> JuMP.relative_gap(m)),
        perturbed = perturbed,
        predicted = predicted,
        solve_time = Float64(get(d, :SolveTime, NaN)),
        total_time = total_time,
        n_binaries = Int(JuMP.num_constraints(m, JuMP.VariableRef, JuMP.MOI.ZeroOne)),
        objective_kind = kind,
        norm_order = p,
    )
end
