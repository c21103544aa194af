# The solvers MIPVerify runs on. find_adversarial_example takes an optimizer constructor plus
# a Dict of attributes for the main solve, and a second Dict (`tightening_options`) for every
# bound-tightening solve (a per-solve time limit, as in MIPVerify's own defaults).

"""
The optimizer constructor and the attributes of the main and of each tightening solve.
"""
struct OptimizerSettings
    optimizer::Any
    main_options::Dict{String,Any}
    tightening_options::Dict{String,Any}
end

const GUROBI = Base.PkgId(Base.UUID("2e9cd046-0924-5485-92f1-d5272153d98b"), "Gurobi")

# Gurobi is optional (a licensed solver); it is loaded only when asked for.
function gurobi_module()::Union{Module,Nothing}
    Base.locate_package(GUROBI) === nothing && return nothing
    try
        return Base.require(GUROBI)
    catch
        return nothing
    end
end

"""
    optimizer_available(name) -> Bool

"highs" always; "gurobi" when Gurobi.jl is installed in the active environment and loads.
"""
optimizer_available(name::AbstractString)::Bool = name == "highs" || (name == "gurobi" && gurobi_module() !== nothing)

function optimizer_settings(name::AbstractString, time_limit::Real, tightening_time_limit::Real)::OptimizerSettings
    if name == "highs"
        return OptimizerSettings(
            HiGHS.Optimizer,
            Dict{String,Any}("output_flag" => false, "time_limit" => Float64(time_limit)),
            Dict{String,Any}("output_flag" => false, "time_limit" => Float64(tightening_time_limit)),
        )
    elseif name == "gurobi"
        gurobi = gurobi_module()
        gurobi === nothing && throw(ArgumentError(
            "Gurobi.jl is not installed or does not load: julia --project=. -e 'using Pkg; Pkg.add(\"Gurobi\")' (needs a Gurobi licence)"))
        return OptimizerSettings(
            Base.invokelatest(getproperty, gurobi, :Optimizer),
            Dict{String,Any}("OutputFlag" => 0, "TimeLimit" => Float64(time_limit)),
            Dict{String,Any}("OutputFlag" => 0, "TimeLimit" => Float64(tightening_time_limit)),
        )
    end
    throw(ArgumentError("unknown optimizer $(repr(name)): use \"highs\" or \"gurobi\""))
end
