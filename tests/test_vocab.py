"""A vocabulary as data: the bytes each token stands for."""

from vocabtrim import vocab


def test_byte_level_tokens_map_to_their_bytes():
    chars = vocab._byte_of_char()
    assert len(chars) == 256 and chars["\u0120"] == ord(" ") and chars["\u010a"] == ord("\n")
