# Tests of the RELUVerifyMIP bridge. Run from the repository root:
#     julia --project=. julia/test/runtests.jl
# (tests/test_mipverify.py runs this file when `julia` is on PATH.)
#
# Oracles: a forward pass written here from PyTorch's definitions (NCHW cross-correlation with
# explicit top/bottom/left/right zero padding, flatten in C or NHWC order, y = W x + b), and
# hand-solved robustness radii of a 2-input network.

using Random
using Test

include(joinpath(@__DIR__, "..", "src", "RELUVerifyMIP.jl"))
using .RELUVerifyMIP

# ---------------------------------------------------------------- the oracle (PyTorch semantics)

"Conv of a (C, H, W) array with OIHW weights, stride s and padding (top, bottom, left, right)."
function conv_chw(x::Array{Float64,3}, w::Array{Float64,4}, b::Vector{Float64}, s::Int, pad::NTuple{4,Int})
    c_in, h, wd = size(x)
    c_out, c_w, kh, kw = size(w)
    @assert c_in == c_w
    t, bo, l, r = pad
    ho = (h + t + bo - kh) ÷ s + 1
    wo = (wd + l + r - kw) ÷ s + 1
    y = zeros(c_out, ho, wo)
    for o in 1:c_out, i in 1:ho, j in 1:wo
        acc = b[o]
        for c in 1:c_in, ki in 1:kh, kj in 1:kw
            row = (i - 1) * s + ki - t
            col = (j - 1) * s + kj - l
            if 1 <= row <= h && 1 <= col <= wd
                acc += w[o, c, ki, kj] * x[c, row, col]
            end
        end
        y[o, i, j] = acc
    end
    return y
end

"C-order flattening of a (C, H, W) array (PyTorch's x.reshape(-1))."
flat_nchw(y::Array{Float64,3}) = vec(permutedims(y, (3, 2, 1)))
"TensorFlow's flattening of the same tensor: NHWC, channels fastest."
flat_nhwc(y::Array{Float64,3}) = vec(permutedims(y, (1, 3, 2)))

relu(v) = max.(v, 0.0)

"""
A conv net in relu-verify's terms (OIHW filters, (out, in) dense weights) and the Dict that
MAT.matread returns for the file relu-verify writes from it.
"""
function random_conv_net(rng, input_shape, convs, dense_sizes, order)
    c, h, w = input_shape
    d = Dict{String,Any}()
    layers = Any[]
    shape = (c, h, w)
    for (i, (c_out, k, s, pad)) in enumerate(convs)
        wt = randn(rng, c_out, shape[1], k, k) ./ (k * sqrt(shape[1]))
        bias = 0.1 .* randn(rng, c_out)
        d["conv$(i)/weight"] = permutedims(wt, (3, 4, 2, 1))  # OIHW -> HWIO
        d["conv$(i)/bias"] = reshape(bias, 1, :)
        d["conv$(i)/stride"] = Int32(s)                        # MAT.jl gives 1x1 arrays as scalars
        d["conv$(i)/padding"] = reshape(Int32.(collect(pad)), 1, 4)
        push!(layers, (:conv, wt, bias, s, pad))
        ho = (shape[2] + pad[1] + pad[2] - k) ÷ s + 1
        wo = (shape[3] + pad[3] + pad[4] - k) ÷ s + 1
        shape = (c_out, ho, wo)
    end
    n_in = prod(shape)
    names = vcat(["fc$(j)" for j in 1:length(dense_sizes)-1], ["logits"])
    for (name, n_out) in zip(names, dense_sizes)
        wt = randn(rng, n_out, n_in) ./ sqrt(n_in)
        bias = 0.1 .* randn(rng, n_out)
        d["$(name)/weight"] = permutedims(wt, (2, 1))  # (out, in) -> (in, out)
        d["$(name)/bias"] = reshape(bias, 1, :)
        push!(layers, (:dense, wt, bias))
        n_in = n_out
    end
    d["flatten_order"] = order
    d["input_shape"] = reshape(Int32[c, h, w], 1, 3)
    d["input_range"] = [0.0 1.0]
    return d, layers
end

function oracle_logits(layers, x::Array{Float64,3}, order)
    y = x
    v = Float64[]
    flattened = false
    for layer in layers
        if layer[1] == :conv
            y = relu(conv_chw(y, layer[2], layer[3], layer[4], layer[5]))
        else
            if !flattened
                v = order == "NHWC" ? flat_nhwc(y) : flat_nchw(y)
                flattened = true
            else
                v = relu(v)
            end
            v = layer[2] * v .+ layer[3]
        end
    end
    return v
end

# ---------------------------------------------------------------- tests

@testset "RELUVerifyMIP" begin
    rng = MersenneTwister(0)

    @testset "layout: C-order (C,H,W) <-> NHWC (1,H,W,C)" begin
        c, h, w = 3, 4, 5
        x = collect(1.0:(c * h * w))
        a = chw_to_mipverify(x, [c, h, w])
        @test size(a) == (1, h, w, c)
        for ci in 1:c, hi in 1:h, wi in 1:w
            @test a[1, hi, wi, ci] == x[(ci - 1) * h * w + (hi - 1) * w + wi]
        end
        @test mipverify_to_chw(a) == x
        @test chw_to_mipverify([1.0, 2.0], [2]) == [1.0, 2.0]
        @test_throws ArgumentError chw_to_mipverify(x, [c, h, w + 1])
    end

    @testset "reader: MIPVerify's forward pass equals the PyTorch-semantics oracle" begin
        cases = [
            # (input shape, convs (out, k, stride, (t, b, l, r)), dense sizes)
            ((1, 28, 28), [(4, 4, 2, (1, 1, 1, 1)), (8, 4, 2, (1, 1, 1, 1))], [20, 10]),
            ((1, 28, 28), [(3, 5, 2, (1, 2, 1, 2))], [10]),            # TF 'SAME' for k5 s2: asymmetric
            ((3, 9, 7), [(4, 3, 1, (1, 1, 1, 1)), (2, 2, 3, (0, 0, 0, 0))], [6, 5, 4]),
            ((2, 6, 6), Tuple{Int,Int,Int,NTuple{4,Int}}[], [7, 3]),   # dense only, image input
        ]
        for (input_shape, convs, dense_sizes) in cases, order in ("NHWC", "NCHW")
            d, layers = random_conv_net(rng, input_shape, convs, dense_sizes, order)
            spec = network_from_dict(d, "case")
            @test spec.input_shape == collect(input_shape)
            @test spec.n_classes == dense_sizes[end]
            for _ in 1:3
                x = rand(rng, input_shape...)
                want = oracle_logits(layers, x, order)
                got = forward_logits(spec, flat_nchw(x))
                @test isapprox(got, want; atol = 1e-10, rtol = 1e-10)
            end
        end
    end

    @testset "reader: vector inputs, Normalize, and bad files" begin
        w1 = randn(rng, 6, 4)
        b1 = randn(rng, 6)
        w2 = randn(rng, 3, 6)
        b2 = randn(rng, 3)
        mean = [0.1, 0.2, 0.3, 0.4]
        sd = [0.5, 0.25, 2.0, 1.0]
        d = Dict{String,Any}(
            "fc1/weight" => permutedims(w1, (2, 1)), "fc1/bias" => reshape(b1, 1, :),
            "logits/weight" => permutedims(w2, (2, 1)), "logits/bias" => reshape(b2, 1, :),
            "normalize/mean" => reshape(mean, 1, :), "normalize/std" => reshape(sd, 1, :),
            "input_shape" => Int32(4), "input_range" => [0.0 1.0], "flatten_order" => "NCHW",
        )
        spec = network_from_dict(d, "mlp")
        x = rand(rng, 4)
        want = w2 * relu(w1 * ((x .- mean) ./ sd) .+ b1) .+ b2
        @test isapprox(forward_logits(spec, x), want; atol = 1e-12)
        bad = copy(d)
        delete!(bad, "input_shape")
        @test_throws ArgumentError network_from_dict(bad, "bad")
        bad = copy(d)
        bad["fc3/weight"] = ones(6, 6)
        @test_throws ArgumentError network_from_dict(bad, "bad")  # fc numbering 1, 3
    end

    @testset "verify_point: hand-solved radii of a 2-input network" begin
        # h = relu([x1 - x2, x2 - x1]), logits = h. At x = (0.7, 0.3) class 0 wins by 0.4;
        # class 1 needs x2 >= x1: Linf radius 0.2, L1 radius 0.4.
        w1 = [1.0 -1.0; -1.0 1.0]
        d = Dict{String,Any}(
            "fc1/weight" => permutedims(w1, (2, 1)), "fc1/bias" => zeros(1, 2),
            "logits/weight" => [1.0 0.0; 0.0 1.0], "logits/bias" => zeros(1, 2),
            "input_shape" => Int32(2), "input_range" => [0.0 1.0],
        )
        spec = network_from_dict(d, "toy")
        x = [0.7, 0.3]
        r = verify_point(spec, x, 0, 0.15; p = Inf, tightening = "interval_arithmetic", time_limit = 30.0)
        @test r.solved
        @test r.infeasible
        @test r.termination == "INFEASIBLE"
        r = verify_point(spec, x, 0, 0.25; p = Inf, tightening = "interval_arithmetic", time_limit = 30.0)
        @test r.has_solution
        @test !r.infeasible
        @test r.objective ≈ 2 * 0.25 - 0.4 atol = 1e-6    # worst violation h2 - h1, at the corner (0.45, 0.55)
        xa = r.perturbed
        @test xa[2] - xa[1] >= 0.2 - 1e-6
        @test maximum(abs.(xa .- x)) <= 0.25 + 1e-6
        # L1: the closest adversarial point is at distance 0.4
        r = verify_point(spec, x, 0, 0.3; p = 1, tightening = "lp", time_limit = 30.0)
        @test r.objective_kind == "closest"
        @test r.infeasible || r.dual_bound > 0.3                  # no L1 point within 0.3
        r = verify_point(spec, x, 0, 0.5; p = 1, tightening = "lp", time_limit = 30.0)
        @test r.has_solution
        @test r.objective ≈ 0.4 atol = 1e-6
        @test r.dual_bound ≈ 0.4 atol = 1e-4
        @test_throws ArgumentError verify_point(spec, x, 0, 0.1; p = 2)   # L2 needs Gurobi
        @test_throws ArgumentError verify_point(spec, x, 0, 0.1; p = 1, objective = "worst")
        @test_throws ArgumentError verify_point(spec, x, 2, 0.1)
        @test optimizer_available("highs")
    end
end
