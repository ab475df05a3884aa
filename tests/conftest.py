import pytest

from accel_train.demo_corpus import write_demo_data


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The built-in demo corpus, written once per test session."""
    path = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(path)
    return path


@pytest.fixture
def local_gpt2(monkeypatch):
    """A GPT-2-shaped tiktoken encoding built from local ranks (bytes plus a few merges; end-of-text 50256),
    put in tiktoken's registry so `tiktoken.get_encoding("gpt2")`, and processes forked after it, use it
    instead of downloading the real one."""
    import tiktoken
    import tiktoken.registry

    ranks = {bytes([i]): i for i in range(256)}
    for word in (b"th", b"the", b" the", b"an", b"and", b" and"):
        ranks[word] = len(ranks)
    pat = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    encoding = tiktoken.Encoding(name="gpt2", pat_str=pat, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 50256})
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "gpt2", encoding)
    return encoding
