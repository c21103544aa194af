# Reading the `.mat` that relu-verify writes with
# `verify.formats.save_model(net, path, format="mat-mipverify")`:
#
#   conv{i}/weight  (kh, kw, in, out)  HWIO, as MIPVerify.get_conv_params reads it
#   conv{i}/bias    (1, out)
#   conv{i}/stride  (1, 1)             one stride for both axes (MIPVerify's Conv2d has one)
#   conv{i}/padding (1, 4)             top, bottom, left, right (MIPVerify's fixed padding)
#   fc{j}/weight    (in, out)          as MIPVerify.get_matrix_params reads it
#   fc{j}/bias      (1, out)
#   logits/weight, logits/bias         the last dense layer (older files: softmax/*)
#   normalize/mean, normalize/std (1, C)   an optional Normalize first layer
#   flatten_order   "NHWC" | "NCHW"    MIPVerify's Flatten([1, 4, 3, 2]) | Flatten([1, 3, 2, 4])
#   input_shape     (1, 3) = C, H, W   or (1, 1) = d for vector inputs
#   input_range     (1, 2)
#
# The network is [Normalize] (Conv2d ReLU)* [Flatten] (Linear ReLU)* Linear. Images get a
# Flatten before the first dense layer; vector inputs have none.

"""
A network read from relu-verify's MIPVerify-layout `.mat`: the MIPVerify net and what the file
says about its input (`input_shape` in PyTorch order).
"""
struct ModelSpec
    net::MIPVerify.Sequential
    input_shape::Vector{Int}
    input_range::Tuple{Float64,Float64}
    n_classes::Int
end

# MAT.jl returns 1x1 arrays as scalars and MATLAB drops trailing singleton dimensions;
# these helpers give every value the shape MIPVerify's readers expect.
as_row(v::Real)::Matrix{Float64} = fill(Float64(v), 1, 1)
as_row(v::AbstractArray)::Matrix{Float64} = reshape(Float64.(v), 1, :)
as_matrix(v::Real)::Matrix{Float64} = fill(Float64(v), 1, 1)
function as_matrix(v::AbstractArray)::Matrix{Float64}
    ndims(v) <= 2 || throw(ArgumentError("expected a matrix, got size $(size(v))"))
    return ndims(v) == 2 ? Float64.(v) : reshape(Float64.(v), :, 1)
end
as_array4(v::Real)::Array{Float64,4} = fill(Float64(v), 1, 1, 1, 1)
function as_array4(v::AbstractArray)::Array{Float64,4}
    ndims(v) <= 4 || throw(ArgumentError("expected at most 4 dimensions, got size $(size(v))"))
    a = Float64.(v)
    return reshape(a, (size(a)..., ntuple(_ -> 1, 4 - ndims(a))...))
end
as_ints(v::Real)::Vector{Int} = [Int(v)]
as_ints(v::AbstractArray)::Vector{Int} = Int.(vec(v))
as_floats(v::Real)::Vector{Float64} = [Float64(v)]
as_floats(v::AbstractArray)::Vector{Float64} = Float64.(vec(v))

function numbered(keys, prefix::AbstractString, suffix::AbstractString)::Vector{Int}
    pattern = Regex("^" * prefix * raw"(\d+)" * suffix * "\$")
    ids = Int[]
    for k in keys
        m = match(pattern, k)
        m === nothing || push!(ids, parse(Int, m.captures[1]))
    end
    sort!(ids)
    ids == collect(1:length(ids)) || throw(ArgumentError("$(prefix)*$(suffix) keys are numbered $(ids), expected 1..$(length(ids))"))
    return ids
end

function padding4(p::Vector{Int})::NTuple{4,Int}
    length(p) == 1 && return (p[1], p[1], p[1], p[1])
    length(p) == 2 && return (p[1], p[1], p[2], p[2])
    length(p) == 4 && return (p[1], p[2], p[3], p[4])
    throw(ArgumentError("a padding must hold 1, 2 or 4 integers, got $(p)"))
end

"""
    read_network(path) -> ModelSpec

Read a `.mat` written by relu-verify in MIPVerify's layout (see the top of this file).
"""
read_network(path::AbstractString)::ModelSpec = network_from_dict(MAT.matread(path), basename(path))

"""
    network_from_dict(d, name) -> ModelSpec

Build the MIPVerify network from the variables of a `.mat` file, as `MAT.matread` returns them.
"""
function network_from_dict(d::AbstractDict, name::AbstractString = "network")::ModelSpec
    function required(key)
        haskey(d, key) && return d[key]
        throw(ArgumentError("$(name): missing key $(key); write the file with relu-verify " *
                            "(verify convert MODEL OUT.mat --format mat-mipverify)"))
    end
    input_shape = as_ints(required("input_shape"))
    length(input_shape) in (1, 3) || throw(ArgumentError("$(name): input_shape must be C, H, W or d, got $(input_shape)"))
    rng = haskey(d, "input_range") ? as_floats(d["input_range"]) : [0.0, 1.0]
    order = haskey(d, "flatten_order") ? strip(string(d["flatten_order"])) : "NCHW"
    order in ("NHWC", "NCHW") || throw(ArgumentError("$(name): flatten_order must be NHWC or NCHW, got $(order)"))

    # MIPVerify's readers index a Dict{String} by "layer/weight" and "layer/bias" and drop the
    # first dimension of the bias; `params` holds the values in exactly that form.
    params = Dict{String,Any}()
    layers = MIPVerify.Layer[]
    if haskey(d, "normalize/mean") || haskey(d, "normalize/std")
        push!(layers, MIPVerify.Normalize(as_floats(required("normalize/mean")), as_floats(required("normalize/std"))))
    end
    conv_ids = numbered(keys(d), "conv", "/weight")
    if !isempty(conv_ids) && length(input_shape) != 3
        throw(ArgumentError("$(name): convolutions need an image input_shape (C, H, W), got $(input_shape)"))
    end
    for i in conv_ids
        layer = "conv$(i)"
        filter = as_array4(required("$(layer)/weight"))
        params["$(layer)/weight"] = filter
        params["$(layer)/bias"] = as_row(required("$(layer)/bias"))
        stride = as_ints(required("$(layer)/stride"))[1]
        padding = padding4(as_ints(required("$(layer)/padding")))
        push!(layers, MIPVerify.get_conv_params(params, layer, size(filter); expected_stride = stride, padding = padding))
        push!(layers, MIPVerify.ReLU())
    end
    if length(input_shape) == 3
        # Julia's permutedims(x, perm)[:] on an NHWC array: [1, 4, 3, 2] reads c fastest, then
        # w, then h (TensorFlow's flatten); [1, 3, 2, 4] reads w fastest, then h, then c (PyTorch's).
        push!(layers, MIPVerify.Flatten(order == "NHWC" ? [1, 4, 3, 2] : [1, 3, 2, 4]))
    end
    fc_ids = numbered(keys(d), "fc", "/weight")
    heads = [h for h in ("logits", "softmax") if haskey(d, "$(h)/weight")]
    length(heads) <= 1 || throw(ArgumentError("$(name): has both logits/* and softmax/* keys"))
    dense = vcat(["fc$(j)" for j in fc_ids], heads)
    isempty(dense) && throw(ArgumentError("$(name): no dense layer (fc1/weight or logits/weight)"))
    n_classes = 0
    for (k, layer) in enumerate(dense)
        w = as_matrix(required("$(layer)/weight"))
        params["$(layer)/weight"] = w
        params["$(layer)/bias"] = as_row(required("$(layer)/bias"))
        push!(layers, MIPVerify.get_matrix_params(params, layer, size(w)))
        k < length(dense) && push!(layers, MIPVerify.ReLU())
        n_classes = size(w, 2)
    end
    net = MIPVerify.Sequential(layers, String(name))
    return ModelSpec(net, input_shape, (rng[1], rng[2]), n_classes)
end
