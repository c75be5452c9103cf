"""The training loader: packed rows with document ids, per-rank slices that add up to the one-process batch,
exact resume, held-out documents never trained on."""

import numpy as np
import pytest
from shard_fixtures import make_shards

from opengemma.data.loader import IGNORE, PackedLoader, holdout_docs, open_data, pack_row, validation_rows
from opengemma.data.shards import TokenShards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("loader"))


def mixture(shards, total=10_000):
    m = open_data(shards, seed=3)
    m.total_tokens = total
    return m


def test_pack_row_hand_worked():
    tokens = np.array([7, 8, 2, 5, 6, 1, 2, 9], dtype=np.uint32)  # ... doc A | [bos 2] 5 6 [eos 1] | [bos] 9
    inputs, targets, segments = pack_row(tokens, np.array([2, 6]))
    assert inputs.tolist() == [7, 8, 2, 5, 6, 1, 2]
    assert targets.tolist() == [8, IGNORE, 5, 6, 1, IGNORE, 9]  # nothing in a document predicts the next's bos
    assert segments.tolist() == [0, 0, 1, 1, 1, 1, 2]


def test_open_data_weights_sources_by_tokens(shards):
    m = open_data(shards)
    n = {name: TokenShards(shards / name).n_tokens for name in ("prose", "code")}
    assert m.stages[0].weights == pytest.approx({k: v / sum(n.values()) for k, v in n.items()})
    one = open_data(shards / "code")
    assert list(one.sources) == ["code"]
    with pytest.raises(FileNotFoundError, match="not a mixture"):
        open_data(shards / "missing")


@pytest.mark.parametrize("world,grad_accum", [(2, 1), (2, 2), (4, 1)])
def test_ranks_slices_add_up_to_the_one_process_batch(shards, world, grad_accum):
    one = PackedLoader(mixture(shards), 16, batch_size=8, grad_accum=1)
    ranks = [
        PackedLoader(mixture(shards), 16, batch_size=8, grad_accum=grad_accum, rank=r, world=world)
        for r in range(world)
    ]
    for _ in range(3):
        want = one.next_step()
        got = [r.next_step() for r in ranks]
        # micro-batch m, rank r holds rows [m * 8/M + r * per_rank, ...) of the global batch
        rows = np.concatenate([np.concatenate([g.inputs[m] for g in got]) for m in range(grad_accum)])
        np.testing.assert_array_equal(rows, want.inputs[0])
        segs = np.concatenate([np.concatenate([g.segments[m] for g in got]) for m in range(grad_accum)])
        np.testing.assert_array_equal(segs, want.segments[0])
        assert all(g.n_targets == want.n_targets == int((want.targets != IGNORE).sum()) for g in got)
    with pytest.raises(ValueError, match="must divide"):
        PackedLoader(mixture(shards), 16, batch_size=6, grad_accum=2, world=2)


def test_resume_continues_at_the_exact_row(shards):
    a = PackedLoader(mixture(shards), 16, batch_size=4)
    [a.next_step() for _ in range(3)]
    state = a.state_dict()
    want = [a.next_step().inputs for _ in range(2)]
    b = PackedLoader(mixture(shards), 16, batch_size=4)
    b.load_state_dict(state)
    for w in want:
        np.testing.assert_array_equal(b.next_step().inputs, w)


def test_held_out_documents_are_never_drawn_and_make_the_validation_rows(shards):
    m = mixture(shards, total=200_000)
    held = holdout_docs(m, fraction=0.1, seed=0)
    assert {k: len(v) for k, v in held.items()} == {"prose": 4, "code": 4}
    docs = {name: {tuple(TokenShards(shards / name).doc(int(i))) for i in ids} for name, ids in held.items()}
    loader = PackedLoader(m, 64, batch_size=8, holdout=held)
    seen = set()
    for _ in range(30):  # several epochs of the 36 training documents per source
        b = loader.next_step()
        for row, seg in zip(b.inputs[0], b.segments[0]):
            for s in np.unique(seg)[1:]:  # whole documents only (the first may be cut)
                d = row[seg == s]
                if len(d) and d[-1] == 1:  # ends with eos inside the row: the complete document
                    seen.add(tuple(d))
    assert seen and not seen & (docs["prose"] | docs["code"])
    rows = validation_rows(m, held, 8, max_rows=2)
    assert set(rows) == {"prose", "code"} and rows["code"][0].shape == (2, 8)
    first = TokenShards(shards / "code").doc(int(held["code"][0]))
    np.testing.assert_array_equal(rows["code"][0][0], first[:8])
