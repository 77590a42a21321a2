"""The image-push URL's body: the image it names, or a 400 saying why not."""

from __future__ import annotations

import pytest

from hookbus_common.errors import HookbusError
from hookbus_receiver import imagepush
from hookbus_receiver.inbound import problem_for

# -------------------------------------------------------------------- image push


def test_parse_push_gives_the_normalised_image():
    ref = imagepush.parse_push({"image": "ghcr.io/acme/app:v2"})
    info = imagepush.image_info(ref)
    assert (info.registry, info.path, info.tag, info.canonical) == (
        "ghcr.io", "acme/app", "v2", "ghcr.io/acme/app:v2",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "code"),
    [({}, "bad_body"), ({"image": None}, "bad_body"), ({"image": "UPPER/case"}, "bad_image")],
)
def test_parse_push_refuses_with_400(doc, code):
    with pytest.raises(HookbusError) as info:
        imagepush.parse_push(doc)
    problem = problem_for(info.value)
    assert (problem.status, problem.error) == (400, code)
