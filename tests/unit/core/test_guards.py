"""porthole/core/guards.py: rule templates (`{id}`, `{name*}`), how they match a path and when two
of them overlap (what the load-time guards against never-forwarded paths and unacknowledged
dangerous reads rest on)."""
from hypothesis import given, settings, strategies as st

from porthole.core.guards import MANY, ONE, parse_template, template_matches, templates_overlap


def test_template_matching():
    assert template_matches(parse_template("/containers/{id}/json"), ("containers", "c1", "json"))
    assert not template_matches(parse_template("/containers/{id}/json"), ("containers", "a", "b", "json"))
    t = parse_template("/images/{name*}/json")
    assert t == ("images", MANY, "json")
    assert template_matches(t, ("images", "a", "json")) and template_matches(t, ("images", "a", "b", "c", "json"))
    assert not template_matches(t, ("images", "json")) and not template_matches(t, ("images", "a", "get"))
    assert parse_template("/x/{id}") == ("x", ONE)


template_tokens = st.lists(st.one_of(st.sampled_from(["containers", "images", "json", "export", "get", "a"]),
                                     st.just(ONE), st.just(MANY)), min_size=1, max_size=4)


concrete = st.lists(st.sampled_from(["containers", "images", "json", "export", "get", "a", "zz"]),
                    min_size=1, max_size=6)


@settings(max_examples=400)
@given(template_tokens, template_tokens, concrete)
def test_overlap_is_sound(a, b, path):
    """If a concrete path matches both templates, templates_overlap must say so, which is what
    makes the load-time check (no rule may reach a guarded path unacknowledged) trustworthy."""
    a, b = tuple(a), tuple(b)
    if a.count(MANY) > 1 or b.count(MANY) > 1:
        return
    if template_matches(a, path) and template_matches(b, path):
        assert templates_overlap(a, b)
