import pytest
import torch

from efflab.core.config import PRESETS, get_preset
from efflab.core.model import KVCache, build_model


@pytest.mark.parametrize("name", ["cpu-tiny", "cpu-small", "cpu-medium"])
def test_parameter_count_matches_the_formula(name):
    cfg = get_preset(name)
    assert build_model(cfg).num_params() == cfg.n_params()


def test_same_seed_same_weights_and_global_rng_untouched():
    cfg = get_preset("cpu-tiny")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(cfg, seed=7)
    after = torch.rand(1)
    b = build_model(cfg, seed=7)
    c = build_model(cfg, seed=8)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.wte.weight, c.wte.weight)


def test_causal_future_tokens_do_not_change_past_logits():
    model = build_model(get_preset("cpu-tiny")).eval()
    x = torch.randint(0, 256, (2, 20))
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 1) % 256
    with torch.no_grad():
        lx, _ = model(x)
        ly, _ = model(y)
    assert torch.allclose(lx[:, :12], ly[:, :12], atol=1e-6)
    assert not torch.allclose(lx[:, 12:], ly[:, 12:])


@pytest.mark.parametrize("prompt", [1, 5, 17])
def test_kv_cache_decode_equals_full_recompute(prompt):
    model = build_model(get_preset("cpu-tiny"), seed=3).eval()
    x = torch.randint(0, 256, (3, 24))
    with torch.no_grad():
        full, _ = model(x)  # (B, T, V) in one pass
        cache = KVCache(model.cfg, 3, 24, "cpu", torch.float32)
        parts = [model(x[:, :prompt], cache=cache)[0]]
        chunk = 3  # decode a few tokens at a time (exercises the offset mask) then one by one
        t = prompt
        parts.append(model(x[:, t:t + chunk], cache=cache)[0])
        t += chunk
        while t < 24:
            parts.append(model(x[:, t:t + 1], cache=cache)[0])
            t += 1
    inc = torch.cat(parts, dim=1)
    assert inc.shape == full.shape
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_an_error():
    model = build_model(get_preset("cpu-tiny"))
    cache = KVCache(model.cfg, 1, 4, "cpu", torch.float32)
    with torch.no_grad(), pytest.raises(ValueError, match="holds 4 positions"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(get_preset("cpu-tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 256, (4, 32))
    y = torch.roll(x, -1, dims=1)
    first = None
    for _ in range(60):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5.0  # about ln(256) = 5.55 at initialisation
    assert loss.item() < 0.5 * first


def test_generate_returns_prompt_plus_new_tokens():
    model = build_model(get_preset("cpu-tiny")).eval()
    prompt = torch.randint(0, 256, (2, 5))
    out = model.generate(prompt, 7, temperature=0)
    assert out.shape == (2, 12) and torch.equal(out[:, :5], prompt)
    again = model.generate(prompt, 7, temperature=0)
    assert torch.equal(out, again)  # greedy is deterministic


def test_gpu_presets_flagged():
    assert PRESETS["gpu-gpt2"].needs_gpu and not PRESETS["cpu-small"].needs_gpu


@pytest.mark.gpu
def test_model_runs_on_cuda_and_matches_cpu():
    cfg = get_preset("cpu-tiny")
    cpu = build_model(cfg, seed=1).eval()
    gpu = build_model(cfg, seed=1, device="cuda").eval()
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        a, _ = cpu(x)
        b, _ = gpu(x.cuda())
    torch.testing.assert_close(a, b.cpu(), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- forms for a compiler

def test_gelu_by_sigmoid_is_the_tanh_gelu_values_and_gradients():
    from efflab.core.model import gelu_tanh_by_sigmoid

    x = torch.linspace(-12, 12, 4001, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    got = gelu_tanh_by_sigmoid(x)
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    assert torch.allclose(g_got, g_ref, atol=1e-12, rtol=0)
    x32 = torch.randn(4096)
    assert (gelu_tanh_by_sigmoid(x32)
            - torch.nn.functional.gelu(x32, approximate="tanh")).abs().max() < 1e-6
    # the exact (erf) GELU is a different function: the check would see a swap
    assert (gelu_tanh_by_sigmoid(x32) - torch.nn.functional.gelu(x32)).abs().max() > 1e-4


def test_gelu_keeping_its_slope_has_the_tanh_gelus_gradient():
    from efflab.core.model import GeluTanhKeepSlope

    x = torch.linspace(-12, 12, 4001, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    got = GeluTanhKeepSlope.apply(x)
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    w = torch.randn(x.shape, dtype=torch.float64)  # a non-uniform upstream gradient
    (g_ref,) = torch.autograd.grad(ref, x, w)
    (g_got,) = torch.autograd.grad(got, x, w)
    assert torch.allclose(g_got, g_ref, atol=1e-12, rtol=0)
    # the erf GELU's slope differs: a hand-written backward of the wrong function is seen
    (g_erf,) = torch.autograd.grad(torch.nn.functional.gelu(x), x, w)
    assert (g_got - g_erf).abs().max() > 1e-4
    small = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GeluTanhKeepSlope.apply, (small,))


def test_mlp_is_traced_in_its_sigmoid_form_and_runs_eagerly_as_one_gelu():
    from efflab.core.model import MLP

    mlp = MLP(get_preset("cpu-tiny"))
    x = torch.randn(2, 5, get_preset("cpu-tiny").n_embd)
    graphs = []

    def record(gm, example_inputs):  # a dynamo backend: keep the traced graph, run it as is
        graphs.append(gm)
        return gm.forward

    traced = torch.compile(mlp, backend=record)(x)
    targets = {str(n.target) for g in graphs for m in g.modules()  # the Function's bodies too
               if isinstance(m, torch.fx.GraphModule)
               for n in m.graph.nodes if n.op == "call_function"}
    assert any("sigmoid" in t for t in targets) and not any("gelu" in t for t in targets)
    assert torch.allclose(traced, mlp(x), atol=1e-6)
    with torch.profiler.profile() as prof:  # eager: PyTorch's single fused GELU operator
        mlp(x)
    names = {e.name for e in prof.events()}
    assert "aten::gelu" in names and "aten::sigmoid" not in names


@pytest.mark.parametrize("T,S", [(1, 1), (5, 5), (1, 9), (4, 9), (128, 128)])
def test_causal_masks_are_lower_triangles_aligned_to_the_end(T, S):
    from efflab.core.model import causal_mask
    from efflab.kernels.flash_attention import causal_mask as kernel_mask

    want = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    assert torch.equal(causal_mask(T, S, "cpu"), want)
    assert torch.equal(kernel_mask(T, S, "cpu"), want)
