import pytest

from accel_train.demo_corpus import write_demo_data


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The built-in demo corpus, written once per test session."""
    path = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(path)
    return path
