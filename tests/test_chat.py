import pytest
import torch

from workbench.chat import ChatFormatter
from workbench.models import load_tokenizer


@pytest.fixture(scope="module")
def chat():
    return ChatFormatter(load_tokenizer())


def _decode(chat, ids):
    return chat.tokenizer.decode(ids)


def test_prompt_only_masks(chat):
    b = chat.encode(["Hi", "Tell me about the moon please"])
    assert b.input_ids.shape == b.attention_mask.shape
    assert b.attention_mask[0, 0] == 0 and b.attention_mask[:, -1].all()  # left padded
    assert not b.response_mask.any()
    for i in range(2):
        post = _decode(chat, b.input_ids[i][b.post_instruction_mask[i]])
        assert post == "<|im_end|>\n<|im_start|>assistant\n"
    # the user message ends right before the post-instruction tokens
    first_post = b.post_instruction_mask[1].nonzero()[0, 0]
    assert _decode(chat, b.input_ids[1][:first_post]).endswith("Tell me about the moon please")


def test_response_mask_and_padding_sides_agree(chat):
    prompts, responses = ["Hi", "What is 2+2?"], ["Hello! How can I help?", "4"]
    left = chat.encode(prompts, responses, padding_side="left")
    right = chat.encode(prompts, responses, padding_side="right")
    assert right.attention_mask[:, 0].all() and not right.attention_mask[0].all() or right.attention_mask.all()
    for i, r in enumerate(responses):
        for b in (left, right):
            assert _decode(chat, b.input_ids[i][b.response_mask[i]]) == r + "<|im_end|>\n"
            real = b.input_ids[i][b.attention_mask[i].bool()]
            assert real.tolist() == left.input_ids[i][left.attention_mask[i].bool()].tolist()
    assert torch.equal(right.last_index, right.attention_mask.sum(1) - 1)
    assert (right.input_ids[torch.arange(2), right.last_index] == left.input_ids[:, -1]).all()


def test_bad_inputs(chat):
    with pytest.raises(ValueError, match="no prompts"):
        chat.encode([])
    with pytest.raises(TypeError, match="list of strings"):
        chat.encode("one string")
    with pytest.raises(ValueError, match="responses"):
        chat.encode(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="padding_side"):
        chat.encode(["a"], padding_side="middle")
    with pytest.raises(TypeError, match=r"prompt 1 is a int, not a string: 7"):
        chat.encode(["a", 7])
    with pytest.raises(TypeError, match=r"response 0 is a NoneType"):
        chat.encode(["a"], [None])
