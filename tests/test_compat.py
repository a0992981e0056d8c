"""The transformers range guard and the KV-cache keyword of the installed release."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from visionthink import compat


@pytest.mark.parametrize("version", ["5.16.1", "4.57.6", "6.0.0", "6.0.0rc1", "5.0.0"])
def test_versions_outside_the_range_are_refused_in_one_line(version):
    with pytest.raises(ImportError) as refused:
        compat.check_transformers(version)
    message = str(refused.value)
    assert "\n" not in message
    assert version in message and compat.TRANSFORMERS_SUPPORTED in message


@pytest.mark.parametrize("version", ["5.17.0", "5.17.0.dev0", "5.22.2", "5.25.0", "5.99.1+local"])
def test_versions_inside_the_range_pass(version):
    assert compat.check_transformers(version)[:1] == (5,)


def test_cache_keyword_follows_the_rename():
    assert compat.cache_keyword("5.17.0") == "past_key_values"
    assert compat.cache_keyword("5.23.0") == "past_key_values"
    assert compat.cache_keyword("5.24.0") == "cache"
    assert compat.cache_arg("kv") == {compat.CACHE_KEYWORD: "kv"}


def test_release_reads_the_leading_numbers():
    assert compat.release("5.17.0") == (5, 17, 0)
    assert compat.release("5.25.0rc1") == (5, 25, 0)
    assert compat.release("6.0.0.dev0+abc") == (6, 0, 0)


def test_importing_the_package_refuses_an_old_transformers():
    """The guard runs at `import visionthink`, from metadata alone, and says what is wrong in one line."""
    code = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '5.16.1' if name == 'transformers' else real(name)\n"
        "import visionthink\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    supported = compat.TRANSFORMERS_SUPPORTED
    assert last == (f"ImportError: visionthink supports transformers{supported}; found transformers 5.16.1 "
                    f"(pip install 'transformers{supported}')")


@pytest.mark.parametrize("name", ["Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLTextModel", "Qwen2_5_VLModel"])
def test_cache_keyword_is_what_the_installed_forward_takes(name):
    """A name the forward does not declare would vanish into its **kwargs and the cache would be ignored."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    parameters = inspect.signature(getattr(modeling_qwen2_5_vl, name).forward).parameters
    assert compat.CACHE_KEYWORD in parameters
    assert parameters[compat.CACHE_KEYWORD].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_the_cache_is_used(shipped_model_dir):
    """A token fed after a cached prefix gives the logits of the whole sequence in one pass."""
    import torch
    from transformers import DynamicCache

    from visionthink.models.loading import load_model

    model, _ = load_model(shipped_model_dir)
    ids = torch.tensor([[5, 9, 12, 7, 3]])
    with torch.no_grad():
        whole = model(input_ids=ids).logits[:, -1]
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :-1], use_cache=True, **compat.cache_arg(cache))
        assert cache.get_seq_length() == 4
        step = model(input_ids=ids[:, -1:], use_cache=True, **compat.cache_arg(cache)).logits[:, -1]
    torch.testing.assert_close(step, whole, rtol=1e-4, atol=1e-4)
