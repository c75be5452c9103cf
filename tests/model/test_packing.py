"""Packed training rows with document masking: each document's logits (and loss, through the chunked loss) equal
those of the document run alone, on configs with sliding windows shorter than the documents and soft-capping."""

import pytest
import torch
import torch.nn.functional as F
from helpers import random_tokens, tiny_model

from opengemma.train.loss import chunked_cross_entropy


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_packed_documents_equal_each_document_alone(name):
    model = tiny_model(name, std=0.05)
    lengths = [5, 11, 1, 7]  # ragged, a one-token document, longer than tiny-gemma2/3's sliding windows
    docs = [random_tokens(model.config, 1, n, seed=i)[0] for i, n in enumerate(lengths)]
    packed = torch.cat(docs)[None]  # (1, T)
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    with torch.no_grad():
        got = model(packed, segments=segments)[0]  # (T, V)
        want = torch.cat([model(d[None])[0] for d in docs])  # each document from position 0, alone
        unmasked = model(packed)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[5:], want[5:], atol=1e-3)  # the check can fail: packing without masks leaks


def test_packed_loss_equals_the_documents_losses_and_rows_are_independent():
    model = tiny_model("tiny-gemma2", std=0.05)
    cfg = model.config
    rows = [[6, 10], [9, 3, 4]]  # two rows of packed documents, 16 tokens each
    tokens = torch.stack([random_tokens(cfg, 1, 16, seed=10 + r)[0] for r in range(2)])
    segments = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(lens)]) for lens in rows])
    targets = tokens.roll(-1, dims=1).clone()
    targets[segments.roll(-1, dims=1) != segments] = -100  # a document's last token predicts nothing
    targets[:, -1] = -100
    h = model(tokens, segments=segments, hidden=True)
    got = chunked_cross_entropy(h, model.embed.weight, targets, softcap=cfg.final_softcap, chunk=7, reduction="sum")
    want = 0.0
    for r, lens in enumerate(rows):
        start = 0
        for n in lens:
            doc = tokens[r, start : start + n][None]
            logits = model(doc)[0].float()
            want = want + F.cross_entropy(logits[:-1], doc[0, 1:], reduction="sum")
            start += n
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="segments"):
        model(tokens, segments=segments, pad=torch.zeros(2, dtype=torch.long))


def test_positions_restart_at_each_document():
    from opengemma.model import segment_positions

    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3], [5, 5, 5, 5, 5, 5, 5, 5]])
    want = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    torch.testing.assert_close(segment_positions(segments), want)
