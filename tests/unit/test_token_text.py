"""TokenText (roles/batch_stream.py): pieces of whole UTF-8 characters, stop strings
held back until they cannot match, and never sent."""

from __future__ import annotations

from lilbee_workers.roles.batch_stream import TokenText


class Pieces(TokenText):
    """TokenText over a fixed token -> bytes table instead of a model's vocabulary."""

    def __init__(self, table: dict[int, bytes], stop: tuple[str, ...] = ()) -> None:
        super().__init__(None, stop)
        self.table = table

    def piece(self, token: int) -> bytes:
        return self.table[token]


def feed(text: TokenText, tokens: list[int]) -> tuple[list[str], bool]:
    out, stopped = [], False
    for token in tokens:
        piece, stopped = text.add(token)
        out.append(piece)
        if stopped:
            break
    return out, stopped


def test_a_character_split_over_two_tokens_waits_for_its_second_half() -> None:
    snowman = "\u2603".encode()  # 3 bytes
    text = Pieces({1: b"a" + snowman[:2], 2: snowman[2:] + b"b"})
    assert feed(text, [1, 2]) == (["a", "\u2603b"], False)
    assert text.flush() == ""


def test_invalid_utf8_is_dropped_as_llama_cpp_python_drops_it() -> None:
    text = Pieces({1: b"\xff", 2: b"ok"})
    assert feed(text, [1, 2])[0] == ["", "ok"]


def test_a_stop_string_is_held_back_then_cut_off() -> None:
    text = Pieces({1: b"bees. ", 2: b"It is", 3: b" swe", 4: b"et"}, stop=("sweet",))
    pieces, stopped = feed(text, [1, 2, 3, 4])
    assert stopped and "".join(pieces) == "bees. It is "
    assert pieces == ["bees. ", "It i", "s ", ""]  # "s", then "swe" could start "sweet"


def test_held_back_text_that_never_becomes_a_stop_is_sent() -> None:
    text = Pieces({1: b"a swe", 2: b"ater"}, stop=("sweet",))
    assert feed(text, [1, 2]) == (["a ", "sweater"], False)
    text = Pieces({1: b"a swe"}, stop=("sweet",))
    assert feed(text, [1]) == (["a "], False)
    assert text.flush() == "swe"


def test_a_stop_string_split_over_many_tokens_and_the_earliest_stop_wins() -> None:
    text = Pieces({1: b"x</", 2: b"s", 3: b">yy END"}, stop=(" END", "</s>"))
    pieces, stopped = feed(text, [1, 2, 3])
    assert stopped and "".join(pieces) == "x"
