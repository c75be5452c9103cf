"""Chunked cross-entropy and token log-probs equal the plain full-logits computation in value and gradient (hidden
and the tied matrix), with ignored targets, soft-capping, ragged chunks and bf16 inputs; and no (N, V) tensor is
saved for the backward."""

import pytest
import torch
import torch.nn.functional as F

from opengemma.train.loss import IGNORE_INDEX, chunked_cross_entropy, token_logprobs


def setup(seed=0, B=3, T=7, D=16, V=50, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, D, generator=g) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :3] = IGNORE_INDEX  # a prompt not trained on
    targets[2, -1] = IGNORE_INDEX  # padding
    return hidden, weight, targets


def reference(hidden, weight, targets, softcap=None):
    logits = (hidden @ weight.t()).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("softcap", [None, 30.0, 2.0])
@pytest.mark.parametrize("chunk", [1, 4, 5, 1024])
def test_loss_and_gradients_equal_the_full_logits_loss(softcap, chunk):
    hidden, weight, targets = setup()
    want = F.cross_entropy(reference(hidden, weight, targets, softcap).flatten(0, 1), targets.flatten())
    got = chunked_cross_entropy(hidden, weight, targets, softcap=softcap, chunk=chunk)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(grads(got, hidden, weight), grads(want, hidden, weight)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_sum_reduction_and_all_ignored():
    hidden, weight, targets = setup()
    n = (targets != IGNORE_INDEX).sum()
    mean = chunked_cross_entropy(hidden, weight, targets, chunk=4)
    total = chunked_cross_entropy(hidden, weight, targets, chunk=4, reduction="sum")
    torch.testing.assert_close(total, mean * n)
    none = torch.full_like(targets, IGNORE_INDEX)
    assert chunked_cross_entropy(hidden, weight, none).item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        chunked_cross_entropy(hidden, weight, targets, reduction="none")
    with pytest.raises(ValueError, match="differ"):
        chunked_cross_entropy(hidden, weight, targets[:, :-1])


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_token_logprobs_equal_log_softmax_gather(softcap):
    hidden, weight, targets = setup(seed=1)
    logp = torch.log_softmax(reference(hidden, weight, targets, softcap), -1)
    want = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0].masked_fill(targets == IGNORE_INDEX, 0.0)
    got = token_logprobs(hidden, weight, targets, softcap=softcap, chunk=4)
    assert got.shape == targets.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    seq_want, seq_got = want.sum(-1), got.sum(-1)  # DPO's sequence log-probs: gradients through both inputs
    for g, w in zip(grads(seq_got.sum(), hidden, weight), grads(seq_want.sum(), hidden, weight)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_bf16_inputs_give_a_float32_loss_close_to_the_float32_reference():
    hidden, weight, targets = setup(seed=2, dtype=torch.bfloat16)
    got = chunked_cross_entropy(hidden, weight, targets, chunk=4)
    want = F.cross_entropy(reference(hidden, weight, targets).flatten(0, 1), targets.flatten())  # same bf16 matmul
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    gh, gw = grads(got, hidden, weight)
    assert gh.dtype == gw.dtype == torch.bfloat16


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for the backward while fn runs (views of one storage count once)."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_no_full_logits_are_saved_for_the_backward():
    hidden, weight, targets = setup(B=4, T=64, V=500)
    logits_bytes = targets.numel() * weight.shape[0] * 4
    chunked, loss = saved_bytes(lambda: chunked_cross_entropy(hidden, weight, targets, chunk=32))
    assert chunked < logits_bytes / 4  # the inputs (hidden, weight, targets), not 8 chunks' float32 logits
    plain, want = saved_bytes(
        lambda: F.cross_entropy(reference(hidden, weight, targets).flatten(0, 1), targets.flatten())
    )
    assert plain >= logits_bytes  # the check can fail: the plain loss saves its (N, V) log-softmax
    torch.testing.assert_close(loss, want)


def test_under_autocast_bf16_the_loss_and_gradients_track_float32():
    """The recipe's bf16 mode: float32 inputs and master weight, bf16 matmuls under autocast, float32 loss."""
    hidden, weight, targets = setup(B=4, T=16, D=32, V=300)
    want = chunked_cross_entropy(hidden, weight, targets, chunk=7)
    want_g = grads(want, hidden, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_cross_entropy(hidden, weight, targets, chunk=7)
    got_g = grads(got, hidden, weight)
    assert got.dtype == torch.float32 and got_g[1].dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    for g, w in zip(got_g, want_g):
        torch.testing.assert_close(g, w, rtol=5e-2, atol=5e-3)
