"""Accept headers as real clients send them."""

from __future__ import annotations

import pytest

from transcode.server.negotiate import (
    NotAcceptable,
    choose_frames,
    choose_image,
    choose_instances,
    parse_accept,
)

HTJ2K = "1.2.840.10008.1.2.4.202"
LE = "1.2.840.10008.1.2.1"


def test_parse_quoted_unquoted_lists_and_q_values() -> None:
    ranges = parse_accept('image/jpeg;q=0.5, multipart/related; type="application/octet-stream"; '
                          'transfer-syntax=*, */*;q=0.1, text/html;q=0')
    assert [r.kind for r in ranges] == ["multipart/related", "image/jpeg", "*/*"]
    assert ranges[0].params == {"type": "application/octet-stream", "transfer-syntax": "*"}
    (quoted,) = parse_accept('multipart/related; type="a, b; c"')
    assert quoted.params["type"] == "a, b; c"
    assert [r.kind for r in parse_accept(None)] == ["*/*"]


@pytest.mark.parametrize(("accept", "stored", "expected"), [
    ('multipart/related; type="application/octet-stream"; transfer-syntax=*', HTJ2K, (HTJ2K, False)),  # OHIF
    ("multipart/related; type=application/octet-stream; transfer-syntax=*", HTJ2K, (HTJ2K, False)),  # Cornerstone3D
    (f"multipart/related; type=application/octet-stream; transfer-syntax={HTJ2K}", HTJ2K, (HTJ2K, False)),
    ('multipart/related; type="image/jphc"', HTJ2K, (HTJ2K, False)),
    ('multipart/related; type="application/octet-stream"', HTJ2K, (LE, True)),  # PS3.18 default
    ("*/*", HTJ2K, (LE, True)),
    (None, HTJ2K, (LE, True)),
    ('multipart/related; type="image/jpeg", multipart/related; type="image/jphc";q=0.5', HTJ2K, (HTJ2K, False)),
    ('multipart/related; type="application/octet-stream"', LE, (LE, False)),
    ('multipart/related; type="image/jpeg"', "1.2.840.10008.1.2.4.50", ("1.2.840.10008.1.2.4.50", False)),
    ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2', HTJ2K,
     ("1.2.840.10008.1.2", True)),
    # An HTJ2K Lossless RPCL codestream is an HTJ2K Lossless one, and an HTJ2K one: sent as named.
    ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.201', HTJ2K,
     ("1.2.840.10008.1.2.4.201", False)),
    ('multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.203', HTJ2K,
     ("1.2.840.10008.1.2.4.203", False)),
    ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.203',
     "1.2.840.10008.1.2.4.201", ("1.2.840.10008.1.2.4.203", False)),
])
def test_frame_choices(accept, stored, expected) -> None:
    choice = choose_frames(accept, stored, single=False)
    assert (choice.transfer_syntax, choice.decode) == expected
    assert choice.part_type.endswith(f"; transfer-syntax={expected[0]}")


def test_a_syntax_the_stored_one_is_not_a_case_of_is_not_claimed() -> None:
    """.201 admits any progression order, so it is not .202; a lossy .203 is neither."""
    for stored, asked in [("1.2.840.10008.1.2.4.201", HTJ2K), ("1.2.840.10008.1.2.4.203", HTJ2K),
                          ("1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.201"), (HTJ2K, "1.2.840.10008.1.2.4.90")]:
        with pytest.raises(NotAcceptable):
            choose_frames(f'multipart/related; type="image/jphc"; transfer-syntax={asked}', stored, single=False)


def test_single_part_only_for_one_frame() -> None:
    assert choose_frames("image/jphc", HTJ2K, single=True).multipart is False
    with pytest.raises(NotAcceptable, match="image/jphc"):
        choose_frames("image/jphc", HTJ2K, single=False)


def test_instances_as_stored_or_converted_when_named() -> None:
    def choose(accept: str | None, single: bool = False, convertible: bool = True) -> tuple[bool, bool]:
        choice = choose_instances(accept, {HTJ2K}, single=single, convertible=convertible)
        return choice.multipart, choice.convert

    assert choose(None) == (True, False)
    assert choose("application/dicom", single=True) == (False, False)
    assert choose(f'multipart/related; type="application/dicom"; transfer-syntax={HTJ2K}') == (True, False)
    assert choose('multipart/related; type="application/dicom"; transfer-syntax=*') == (True, False)
    assert choose(f'multipart/related; type="application/dicom"; transfer-syntax={LE}') == (True, True)
    assert choose(f"application/dicom; transfer-syntax={LE}", single=True) == (False, True)
    # Preference order holds: as stored first when the client prefers it.
    assert choose(f'multipart/related; type="application/dicom"; transfer-syntax={LE}; q=0.5, '
                  'multipart/related; type="application/dicom"; transfer-syntax=*') == (True, False)
    with pytest.raises(NotAcceptable, match="transfer-syntax=\\*$"):
        choose(f'multipart/related; type="application/dicom"; transfer-syntax={LE}', convertible=False)
    with pytest.raises(NotAcceptable):
        choose('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50')


def test_rendered_media_types() -> None:
    assert choose_image(None) == "image/jpeg"
    assert choose_image("image/png, image/jpeg;q=0.5") == "image/png"
    assert choose_image("image/jpeg", "image/png") == "image/png"  # the accept query parameter wins
    with pytest.raises(NotAcceptable):
        choose_image("image/gif")


def test_level_refusals_name_the_real_obstacle() -> None:
    from transcode.server.negotiate import level_refusal

    stored = choose_frames("image/jphc", "1.2.840.10008.1.2.4.202", single=True)
    assert level_refusal(stored, "1.2.840.10008.1.2.4.202", has_levels=True) is None
    decoded = choose_frames(None, "1.2.840.10008.1.2.4.202", single=True)
    assert "accept image/jphc" in level_refusal(decoded, "1.2.840.10008.1.2.4.202", has_levels=True)
    kept = choose_frames("image/jphc", "1.2.840.10008.1.2.4.203", single=True)
    message = level_refusal(kept, "1.2.840.10008.1.2.4.203", has_levels=False)
    assert "kept as is in 1.2.840.10008.1.2.4.203" in message and "accept" not in message
