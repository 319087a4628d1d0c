"""The GGUF tokenizer built without PyTorch equals transformers' GGUF tokenizer; the run time imports no torch."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import write_gguf

from gpg_em.models import load_pretrained
from gpg_em.models.gguf_tokenizer import tokenizer_from_metadata
from gpg_em.models.hf import ModelLoadError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["What is 17 + 25?", "  leading spaces\n\n\nnewlines\ttabs  ", "Ünïcödé 日本語 🙂 café",
         "<|im_end|>inside<|im_start|> text<|endoftext|>", "12345678 + 3.14159 = ?", "don't I'LL we've", "",
         "Put your final answer within \\boxed{}.", "x" * 300]


def transformers_gguf_tokenizer(path):
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def assert_same_tokenizer(ours, ref, texts=TEXTS):
    """Equal ids (plain and chat-templated), decode (with and without specials) and special tokens."""
    for text in texts:
        ids = ref(text)["input_ids"]
        assert ours(text)["input_ids"] == ids, text
        assert ours.decode(ids) == ref.decode(ids) and ours.decode(ids, skip_special_tokens=True) == \
            ref.decode(ids, skip_special_tokens=True), text
        for system in ([], [{"role": "system", "content": "Be brief."}]):
            messages = system + [{"role": "user", "content": text}]
            assert ours.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"] == \
                ref.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"], text
    for key in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(ours, key) == getattr(ref, key), key
    assert sorted(ours.all_special_ids) == sorted(ref.all_special_ids)
    assert ours.get_vocab() == ref.get_vocab() and len(ours) == len(ref)


def test_smollm2_tokenizer_equals_transformers(smollm2):
    from gpg_em.models.loading import builtin_path
    ref = transformers_gguf_tokenizer(builtin_path("smollm2-135m-instruct"))
    assert_same_tokenizer(smollm2.tokenizer, ref)
    ids = np.random.default_rng(0).integers(0, len(ref), size=(8, 40)).tolist()  # any ids, specials included
    assert smollm2.tokenizer.batch_decode(ids) == ref.batch_decode(ids)
    assert smollm2.tokenizer.convert_ids_to_tokens(list(range(20))) == ref.convert_ids_to_tokens(list(range(20)))


@pytest.mark.parametrize("pre,add_bos,split", [
    ("default", None, ["12345", "Ġapples"]),  # GPT-2's own split: a digit run stays whole
    ("llama-bpe", True, ["123", "45", "Ġapples"]),  # Llama 3: numbers in runs of at most 3 digits
    ("qwen2", False, ["1", "2", "3", "4", "5", "Ġapples"]),  # Qwen2: single digits
])
def test_tiny_gguf_tokenizer_equals_transformers(tiny_hf_dir, tmp_path, pre, add_bos, split):
    path = write_gguf(tiny_hf_dir("llama3"), tmp_path / "t.gguf", tokenizer=dict(pre=pre, add_bos=add_bos))
    ours = load_pretrained(path).tokenizer
    assert [w for w, _ in ours.backend_tokenizer.pre_tokenizer.pre_tokenize_str("12345 apples")] == split
    assert_same_tokenizer(ours, transformers_gguf_tokenizer(path))
    assert (ours("hi")["input_ids"][0] == 1) == bool(add_bos)  # <|im_start|> is the tiny vocabulary's BOS


def test_unsupported_tokenizer_kind_is_one_line():
    with pytest.raises(ModelLoadError, match=r"m\.gguf: tokenizer\.ggml\.model is 'llama'; expected 'gpt2'"):
        tokenizer_from_metadata({"ggml.model": "llama", "ggml.tokens": ["a"]}, "m.gguf")
    with pytest.raises(ModelLoadError, match=r"m\.gguf: tokenizer\.ggml\.tokens is missing"):
        tokenizer_from_metadata({"ggml.model": "gpt2"}, "m.gguf")


_NO_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # as in an environment without PyTorch: find_spec says absent, import fails
    from gpg_em.cli import main
    workdir = sys.argv[1]
    main(["train", "--config", "configs/tiny.py", "--workdir", workdir, "--config.total_steps=1",
          "--config.eval_every=100"])
    main(["export", "--workdir", workdir, "--out", workdir + "/hf"])
    main(["plan", "--config", "configs/tiny.py"])
    from gpg_em.models import load_pretrained
    tok = load_pretrained("smollm2-135m-instruct", with_tokenizer=True).tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                  return_dict=True)["input_ids"]
    print("TOKENS", len(ids), tok.decode(ids[-3:]))
    assert sys.modules["torch"] is None
""")


def test_run_time_imports_no_torch(tmp_path):
    """train, export, plan and the shipped GGUF's tokenizer work where PyTorch cannot be imported."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, str(tmp_path / "run")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TOKENS" in out.stdout and "assistant" in out.stdout.split("TOKENS")[1], out.stdout[-2000:]
    assert (tmp_path / "run" / "hf" / "config.json").is_file()
