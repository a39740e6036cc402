"""Text printed as it is decoded."""

from vocabtrim.text import Printer


PIECES = {0: "ab", 1: "\ufffd"}


class HalfCharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(PIECES[i] for i in ids)


def test_streamer_flushes_text_ending_in_a_replacement_character(capsys):
    stream = Printer(HalfCharTokenizer())
    stream([0])
    stream([1])  # held back: might be the first half of a character
    stream.finish()
    assert capsys.readouterr().out == "ab\ufffd\n"
