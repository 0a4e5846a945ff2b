"""HFVLM over tiny randomly initialised LLaVA and Qwen2-VL models built offline (no downloads): a
word-level tokenizer trained on a few sentences, image processors with explicit sizes, a chat template."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,  # noqa: E402
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                          Qwen2VLVideoProcessor)

from rag.vlm import load_vlm  # noqa: E402
from rag.vlm.base import TAG_TOKENS, Document, SemanticTags  # noqa: E402
from rag.vlm.hf import HFVLM, UnknownEmbedding, parse_semantic_line  # noqa: E402

CORPUS = ["what is the capital of this country", "the answer is paris in france",
          "entity : bhutan ; category : country ; attributes : capital , flag",
          "passages question using answer the image in a few words",
          "reply with exactly one of if not relevant retrieved external knowledge", "1 2 3 4 5"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}"
                 "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def word_tokenizer(special: list[str]) -> PreTrainedTokenizerFast:
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>", *special])
    words.train_from_iterator(CORPUS, trainer)
    words.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def text_ids(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, max_position_embeddings=1024, initializer_range=0.5)


def tiny_llava(path) -> None:
    """Save a tiny random LLaVA (CLIP vision tower, Llama text model) and its processor under `path`."""
    tokenizer = word_tokenizer(["<image>"])
    images = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, chat_template=CHAT_TEMPLATE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8, projection_dim=16)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, **text_ids(tokenizer))
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_select_strategy="default",
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         initializer_range=0.5)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)


def tiny_qwen2_vl(path) -> None:
    """Save a tiny random Qwen2-VL (one 28x28-pixel merge block per image) and its processor under `path`."""
    vision_tokens = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = word_tokenizer(vision_tokens)
    pixels = dict(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2)
    template = CHAT_TEMPLATE.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=template)
    start, end, image, video = tokenizer.convert_tokens_to_ids(vision_tokens)
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         **text_ids(tokenizer)),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)


class MeanColour:
    """A stand-in image embedder: an image's normalised mean colour."""

    def encode_images(self, images):
        x = np.stack([np.asarray(im.convert("RGB"), np.float32).mean((0, 1)) + 1 for im in images])
        return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module", params=[tiny_llava, tiny_qwen2_vl], ids=["llava", "qwen2-vl"])
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param.__name__)
    request.param(path)
    return path


def load_tuned(path, **kwargs) -> HFVLM:
    """Load, then give the new tag tokens distinct output rows, as fine-tuning would: freshly added
    rows all start near the mean embedding, which puts every tag probability at 0.5."""
    vlm = HFVLM.load(path, image_embedder=MeanColour(), max_new_tokens=8, **kwargs)
    ids = vlm.tokenizer.convert_tokens_to_ids(list(TAG_TOKENS))
    head = vlm.model.get_output_embeddings().weight
    with torch.no_grad():
        head[ids] = 0.1 * torch.randn(len(ids), head.shape[1], generator=torch.Generator().manual_seed(0))
    return vlm


@pytest.fixture(scope="module")
def vlm(model_dir):
    return load_tuned(model_dir, batch_size=2)


IMAGES = [Image.new("RGB", (20, 30), c) for c in [(200, 10, 10), (10, 200, 10), (10, 10, 200)]]
QUESTIONS = ["what is the capital", "what is the capital of this country", "answer"]
DOCS = [Document(1, "bhutan", "Bhutan", "the capital of bhutan is thimphu", heading="capital"),
        Document(2, "france", "France", "paris is the capital of france"),
        Document(3, "peru", "Peru", "lima")]


def test_tag_tokens_are_single_special_tokens(model_dir, vlm):
    saved = PreTrainedTokenizerFast.from_pretrained(model_dir)
    assert not any(t in saved.get_vocab() for t in TAG_TOKENS)  # so load added them
    tok = vlm.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in TAG_TOKENS]
    assert len(set(ids)) == 4 and tok.unk_token_id not in ids
    for tag, i in zip(TAG_TOKENS, ids):
        assert tok.encode(f"reply {tag} now", add_special_tokens=False)[1] == i
        assert tok.added_tokens_decoder[i].special and tag in tok.all_special_tokens
    assert vlm.model.get_input_embeddings().num_embeddings >= max(ids) + 1
    assert vlm.model.get_output_embeddings().weight.shape[0] >= max(ids) + 1


def test_answers_one_string_per_question(vlm):
    closed = vlm.answer(IMAGES, QUESTIONS)
    with_docs = vlm.answer(IMAGES, QUESTIONS, [DOCS[:2], [], DOCS])
    for answers in (closed, with_docs):
        assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert with_docs[1] == closed[1]  # a question without documents is answered closed-book
    answer, score, index = vlm.read(IMAGES[0], QUESTIONS[0], DOCS)
    assert isinstance(answer, str) and (score, index) == (0.0, 0)


def test_tag_probabilities(vlm):
    p_ret = vlm.retrieval_needed(IMAGES, QUESTIONS)
    rel = vlm.relevance(IMAGES, QUESTIONS, DOCS)
    cons = vlm.consistency(IMAGES[0], QUESTIONS[0], DOCS)
    for p in (p_ret, rel, cons):
        assert p.shape == (3,) and np.all((p > 0) & (p < 1))
    assert vlm.consistency(IMAGES[0], QUESTIONS[0], DOCS[:2]).shape == (2,)


def test_left_padded_batches_match_one_at_a_time(model_dir, vlm):
    single = load_tuned(model_dir, batch_size=1)
    batched = vlm.retrieval_needed(IMAGES, QUESTIONS)
    assert np.ptp(batched) > 0.05  # the questions differ in length, so rows were padded
    np.testing.assert_allclose(batched, single.retrieval_needed(IMAGES, QUESTIONS), atol=1e-3)
    assert vlm.answer(IMAGES, QUESTIONS) == single.answer(IMAGES, QUESTIONS)


def test_semantic_tags(vlm):
    tags = vlm.semantic_tags(IMAGES, QUESTIONS)
    assert len(tags) == 3 and all(isinstance(t, SemanticTags) for t in tags)
    assert all(0.0 <= t.entity_confidence <= 1.0 for t in tags)


def test_semantic_tags_come_from_the_generated_line(vlm, monkeypatch):
    line = "entity: Bhutan; category: country; attributes: capital"
    monkeypatch.setattr(vlm, "_generate", lambda images, texts, n: ([line] * len(texts), np.full(len(texts), 0.7)))
    assert vlm.semantic_tags(IMAGES[:1], QUESTIONS[:1]) == [SemanticTags("Bhutan", 0.7, "country", ["capital"])]


@pytest.mark.parametrize("line, expected", [
    ("Entity: Bhutan; Category: country; Attributes: capital, flag", ("Bhutan", "country", ["capital", "flag"])),
    ("entity = Taj Mahal | category: building\nattribute: height.", ("Taj Mahal", "building", ["height"])),
    ("entity: unknown; category: none; attributes:", (None, None, [])),
    ("it is a dog", (None, None, [])),
])
def test_parse_semantic_line(line, expected):
    assert parse_semantic_line(line) == expected


def test_embedding_rows_stand_for_their_images(model_dir):
    vlm = HFVLM.load(model_dir, image_embedder=MeanColour(), max_new_tokens=4)
    vecs = vlm.embed_images(IMAGES)
    assert vecs.shape == (3, 3) and vecs.dtype == np.float32
    np.testing.assert_allclose(vlm.retrieval_needed(list(vecs), QUESTIONS), vlm.retrieval_needed(IMAGES, QUESTIONS))
    assert vlm.answer([vecs[1]], QUESTIONS[:1]) == vlm.answer([IMAGES[1]], QUESTIONS[:1])
    with pytest.raises(UnknownEmbedding, match="did not compute"):
        vlm.answer([np.ones(3, np.float32)], QUESTIONS[:1])


def test_load_vlm_resolves_hf_paths(model_dir):
    assert isinstance(load_vlm(f"hf:{model_dir}"), HFVLM)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no transformers model"):
        HFVLM.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no transformers model"):
        load_vlm(f"hf:{tmp_path}")
