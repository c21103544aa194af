# relu-verify holds one input as PyTorch does, (C, H, W), and passes it flattened in C order
# (row-major). MIPVerify takes images as NHWC batch arrays (1, H, W, C) in Julia's column-major
# storage. These two functions are the only place where the two layouts meet.

"""
    chw_to_mipverify(x, input_shape) -> Array{Float64}

`x` is one input flattened in C order over `input_shape` = [C, H, W] (or [d]). Returns the
(1, H, W, C) array MIPVerify expects (a length-d vector for vector inputs), so that
`result[1, h, w, c] == x[(c - 1) * H * W + (h - 1) * W + w]`.
"""
function chw_to_mipverify(x::AbstractVector{<:Real}, input_shape::AbstractVector{<:Integer})::Array{Float64}
    n = prod(input_shape)
    length(x) == n ||
        throw(ArgumentError("the input has $(length(x)) values, the model expects $(n) = prod($(collect(input_shape)))"))
    v = collect(Float64, x)
    length(input_shape) == 1 && return v
    length(input_shape) == 3 || throw(ArgumentError("input_shape must be [C, H, W] or [d], got $(collect(input_shape))"))
    c, h, w = input_shape
    # A C-order (C, H, W) buffer read column-major is the array with reversed dims (W, H, C).
    whc = reshape(v, w, h, c)
    return reshape(permutedims(whc, (2, 1, 3)), 1, h, w, c)
end

"""
    mipverify_to_chw(x) -> Vector{Float64}

The inverse of [`chw_to_mipverify`](@ref): a (1, H, W, C) array (or a vector) back to the
C-order flattening of (C, H, W).
"""
function mipverify_to_chw(x::AbstractArray{<:Real})::Vector{Float64}
    ndims(x) == 1 && return collect(Float64, x)
    ndims(x) == 4 && size(x, 1) == 1 || throw(ArgumentError("expected a (1, H, W, C) array, got size $(size(x))"))
    hwc = x[1, :, :, :]
    # (W, H, C) in column-major order is (C, H, W) in C order.
    return vec(collect(Float64, permutedims(hwc, (2, 1, 3))))
end
