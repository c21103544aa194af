"""
    RELUVerifyMIP

relu-verify's bridge to MIPVerify.jl. It reads a network that relu-verify exported in
MIPVerify's `.mat` layout, rebuilds it from MIPVerify's own layers (`get_conv_params`,
`get_matrix_params`, `Flatten`, `Normalize`, `ReLU`) and answers one robustness query per
call with `MIPVerify.find_adversarial_example`, returning plain values (strings, numbers,
vectors) that juliacall hands to Python unchanged.

One job per file:
- `layout.jl`: relu-verify's C-order (C, H, W) vectors <-> MIPVerify's NHWC (1, H, W, C) arrays
- `read_network.jl`: the `.mat` (as a Dict) -> `MIPVerify.Sequential`
- `optimizers.jl`: HiGHS (default) or Gurobi, with their time limits
- `verify_point.jl`: one query, and `forward_logits` for cross-checks

Load it with `include("julia/src/RELUVerifyMIP.jl"); using .RELUVerifyMIP` in the
environment of the repository's `Project.toml`.
"""
module RELUVerifyMIP

import HiGHS
import JuMP
import MAT
import MIPVerify

export ModelSpec, read_network, network_from_dict, forward_logits, verify_point, optimizer_available
export chw_to_mipverify, mipverify_to_chw

include("layout.jl")
include("read_network.jl")
include("optimizers.jl")
include("verify_point.jl")

function __init__()
    # MIPVerify logs every query at "notice" level; relu-verify reports results itself.
    if isdefined(MIPVerify, :setloglevel!)
        MIPVerify.setloglevel!("warn")
    end
end

end # module
