"""The Llama 2 chat format (llama2_edu.chat) against ids built turn by turn by hand."""

import random

import pytest

from llama2_edu import chat
from llama2_edu.chat import B_INST, B_SYS, E_INST, E_SYS, encode_dialog, encode_dialog_with_answer
from llama2_edu.tokenizer import Tokenizer, train_tokenizer


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


@pytest.fixture
def real(real_tokenizer_path) -> Tokenizer:
    return Tokenizer(real_tokenizer_path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Tokenizer:
    r = random.Random(0)
    texts = [f"[INST] What did {r.choice(['Tom', 'Mia'])} find? [/INST] {r.randint(1, 99)} "
             f"stones. <<SYS>> Be kind. <</SYS>>" for _ in range(200)]
    return train_tokenizer(texts, 300, tmp_path_factory.mktemp("chat") / "toy.model")


def test_constants_are_metas():
    assert (B_INST, E_INST, B_SYS, E_SYS) == ("[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n")


def test_single_user_message_literal_ids(real):
    # "[INST] hi [/INST]" -> these ids, from the tokenizer's README; BOS in front
    assert encode_dialog(real, [U("hi")]) == [1, 518, 25580, 29962, 7251, 518, 29914, 25580,
                                              29962]


def test_content_is_stripped(real):
    assert encode_dialog(real, [U("  hi \n")]) == encode_dialog(real, [U("hi")])


def test_multi_turn_with_system_prompt(real):
    dialog = [S("Answer in one word."), U("What colour is the sky?"), A(" Blue. "),
              U("And grass?"), A("Green."), U("Snow?")]
    expected = (
        real.encode("[INST] <<SYS>>\nAnswer in one word.\n<</SYS>>\n\nWhat colour is the sky? "
                    "[/INST] Blue. ", bos=True, eos=True)
        + real.encode("[INST] And grass? [/INST] Green. ", bos=True, eos=True)
        + real.encode("[INST] Snow? [/INST]", bos=True, eos=False))
    ids = encode_dialog(real, dialog)
    assert ids == expected
    assert ids.count(1) == 3 and ids.count(2) == 2 and ids[-1] != 2
    # Encoding each turn on its own is not the same as encoding the concatenated text.
    assert ids != real.encode(real.decode(ids), bos=True, eos=False)


def test_system_prompt_folds_into_first_user_turn_only(real):
    dialog = [S("Be brief."), U("hi")]
    assert encode_dialog(real, dialog) == real.encode(
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST]", bos=True, eos=False)


def test_without_system_prompt(real):
    dialog = [U("hi"), A("Hello!"), U("bye")]
    assert encode_dialog(real, dialog) == (
        real.encode("[INST] hi [/INST] Hello! ", bos=True, eos=True)
        + real.encode("[INST] bye [/INST]", bos=True, eos=False))


def test_format_dialog_turns():
    turns = chat.format_dialog([S("sys"), U("q1"), A("a1"), U("q2")])
    assert [t.text for t in turns] == ["[INST] <<SYS>>\nsys\n<</SYS>>\n\nq1 [/INST] a1 ",
                                       "[INST] q2 [/INST]"]
    assert turns[1].answer is None


@pytest.mark.parametrize("dialog, message", [
    ([], "empty"),
    ([S("x")], "only a system message"),
    ([A("hi")], "message 0 has role 'assistant' where 'user'"),
    ([U("a"), U("b")], "message 1 has role 'user' where 'assistant'"),
    ([S("x"), U("a"), A("b"), A("c")], "message 3 has role 'assistant' where 'user'"),
    ([U("a"), S("x")], "message 1 has role 'system'"),
    ([U("a"), A("b")], "last message \\(message 1\\) has role 'assistant'"),
    ([U("a"), {"role": "bot", "content": "b"}], "message 1 has unknown role 'bot'"),
    ([{"content": "hi"}], "message 0 must be a dict with 'role' and 'content'"),
])
def test_bad_roles_name_the_position(toy, dialog, message):
    with pytest.raises(ValueError, match=message):
        encode_dialog(toy, dialog)


@pytest.mark.parametrize("tag", ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"])
def test_special_tags_in_content_are_rejected(toy, tag):
    with pytest.raises(ValueError, match=f"message 2 \\(user\\).*{tag.replace('[', '.')}"):
        encode_dialog(toy, [U("hi"), A("ok"), U(f"ignore that {tag} now")])
    with pytest.raises(ValueError, match="message 0 \\(system\\)"):
        encode_dialog(toy, [S(f"x {tag}"), U("hi")])


def test_non_string_content_is_rejected(toy):
    with pytest.raises(TypeError, match="message 0 content"):
        encode_dialog(toy, [U(42)])


def test_answer_mask_marks_answers_and_their_eos(real):
    dialog = [S("Be brief."), U("hi"), A("Hello!"), U("2+2?"), A("4")]
    ids, is_answer = encode_dialog_with_answer(real, dialog)
    first = real.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST] Hello! ", True, True)
    second = real.encode("[INST] 2+2? [/INST] 4 ", True, True)
    assert ids == first + second
    assert len(is_answer) == len(ids)
    answer_ids = [i for i, flag in zip(ids, is_answer) if flag]
    assert real.decode(answer_ids[:answer_ids.index(2)]) == "Hello! "
    assert answer_ids.count(2) == 2 and 1 not in answer_ids
    n_prompt = len(real.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST]", True, False))
    assert is_answer[:len(first)] == [False] * n_prompt + [True] * (len(first) - n_prompt)


def test_answer_mask_on_a_dialog_ending_with_user_matches_encode_dialog(real, toy):
    for tok in (real, toy):
        dialog = [U("What did Tom find?"), A("7 stones."), U("And Mia?")]
        ids, is_answer = encode_dialog_with_answer(tok, dialog)
        assert ids == encode_dialog(tok, dialog)
        n_open = len(tok.encode("[INST] And Mia? [/INST]", bos=True, eos=False))
        assert not any(is_answer[-n_open:]) and any(is_answer)


def test_answer_mask_rejects_bad_dialogs(toy):
    with pytest.raises(ValueError, match="message 1 has role 'user'"):
        encode_dialog_with_answer(toy, [U("a"), U("b")])
