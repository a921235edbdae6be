"""Which hook carries the input of each linear map: the tensor the map multiplies, so that the second moment captured
there is exactly the C in ‖C^{1/2}(W − W_r)‖_F.

TransformerBridge exposes every linear layer's own input (``blocks.L.attn.q.hook_in``, ``attn.o.hook_in``,
``mlp.in.hook_in``, ``mlp.out.hook_in``); a HookedTransformer (folded norms) has the normalised residual and the
heads' outputs instead. W_Q, W_K and W_V read the same input, as do W_in and W_gate, so one capture site serves each
group. Tested: on the tiny model each site's rows times the matrix equal the matrix's own output hook.
"""

from __future__ import annotations

from workbench.errors import SiteError

# kind -> candidate hook names (first present wins), ``{layer}`` filled in
INPUTS = {
    "W_Q": ("blocks.{layer}.attn.q.hook_in", "blocks.{layer}.ln1.hook_normalized"),
    "W_K": ("blocks.{layer}.attn.q.hook_in", "blocks.{layer}.ln1.hook_normalized"),
    "W_V": ("blocks.{layer}.attn.q.hook_in", "blocks.{layer}.ln1.hook_normalized"),
    "W_O": ("blocks.{layer}.attn.o.hook_in", "blocks.{layer}.attn.hook_z"),
    "W_in": ("blocks.{layer}.mlp.in.hook_in", "blocks.{layer}.ln2.hook_normalized"),
    "W_gate": ("blocks.{layer}.mlp.in.hook_in", "blocks.{layer}.ln2.hook_normalized"),
    "W_out": ("blocks.{layer}.mlp.out.hook_in", "blocks.{layer}.mlp.hook_post"),
}


def input_site(hooks, kind: str, layer: int) -> str:
    """The hook whose activations are the input rows of matrix ``kind`` at ``layer`` (TransformerLens names).

    Example: ``input_site(lm.hook_points(), "W_out", 3)  # "blocks.3.mlp.out.hook_in" on the bridge``"""
    for pattern in INPUTS[kind]:
        name = pattern.format(layer=layer)
        if name in hooks:
            return name
    raise SiteError(f"low_rank: no hook carries the input of {kind} at layer {layer} (looked for "
                    f"{[p.format(layer=layer) for p in INPUTS[kind]]})")
