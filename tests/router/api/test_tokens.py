"""Token checks against a provider's published keys: which tokens pass, and how the keys are
fetched (once, again for a rotated key, not for every made-up key id, kept through an outage)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from router.api.tokens import (
    MIN_REFRESH_INTERVAL_S,
    IdentityProviderUnavailableError,
    JwksCache,
    TokenRejectedError,
    TokenRules,
    TokenVerifier,
    fetch_json,
)
from testing.identity_provider import API_AUDIENCE, IdentityProvider, running_identity_provider


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with running_identity_provider() as provider:
        yield provider


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def verifier(idp: IdentityProvider, clock: Clock, max_age_s: float = 3600) -> TokenVerifier:
    return TokenVerifier(
        JwksCache(idp.jwks_url, fetch_json(None), max_age_s=max_age_s, clock=clock)
    )


def rules(idp: IdentityProvider, algorithms: tuple[str, ...] = ("RS256", "ES256")) -> TokenRules:
    return TokenRules(issuer=idp.url, audience=API_AUDIENCE, algorithms=algorithms, leeway_s=30)


def test_a_valid_token_of_each_allowed_algorithm_passes_with_its_claims(
    idp: IdentityProvider,
) -> None:
    check = verifier(idp, Clock())
    for algorithm in ("RS256", "ES256"):
        claims = check.verify(idp.token(["radiologists"], algorithm=algorithm), rules(idp))
        assert (claims["sub"], claims["groups"]) == ("u-2002", ["radiologists"])


def test_clock_skew_within_the_leeway_is_accepted(idp: IdentityProvider) -> None:
    import time

    now = int(time.time())
    check = verifier(idp, Clock())
    assert check.verify(idp.token(exp=now - 10, nbf=now + 10, iat=now), rules(idp))
    with pytest.raises(TokenRejectedError, match="expired"):
        check.verify(idp.token(exp=now - 60, iat=now - 400, nbf=now - 400), rules(idp))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda idp: idp.unsigned_token(), "'none' is not allowed"),
        (lambda idp: idp.hs256_with_public_key(), "'HS256' is not allowed"),
        (lambda idp: idp.token(algorithm="ES256", kid="rsa-1"), "not a ES256 key"),
        (lambda idp: idp.token(kid="ec-1"), "not a RS256 key"),
        (lambda idp: idp.token(kid="no-such-key"), "does not publish"),
        (lambda idp: idp.signed_by_stranger(), "signature does not verify"),
        (lambda idp: idp.token(aud=["someone-else", "another"]), "another audience"),
        (lambda idp: idp.token(iss=idp.url + "/"), "another issuer"),
        (lambda idp: idp.token(exp=None), "lacks the 'exp' claim"),
        (lambda idp: idp.token(sub=None), "lacks the 'sub' claim"),
        (lambda idp: "not.a.token", "not a well-formed JWT"),
        (lambda idp: idp.token()[:-4] + "AAAA", "signature does not verify"),
    ],
)
def test_a_bad_token_is_rejected_with_the_reason(
    idp: IdentityProvider, make: Any, says: str
) -> None:
    with pytest.raises(TokenRejectedError, match=says):
        verifier(idp, Clock()).verify(make(idp), rules(idp))


def test_an_algorithm_left_out_of_the_configuration_is_rejected(idp: IdentityProvider) -> None:
    with pytest.raises(TokenRejectedError, match="'ES256' is not allowed"):
        verifier(idp, Clock()).verify(idp.token(algorithm="ES256"), rules(idp, ("RS256",)))


def test_an_id_token_must_carry_the_sign_ins_nonce(idp: IdentityProvider) -> None:
    check = verifier(idp, Clock())
    token = idp.token(nonce="n-1")
    assert check.verify(token, rules(idp), nonce="n-1")
    with pytest.raises(TokenRejectedError, match="nonce"):
        check.verify(token, rules(idp), nonce="n-2")


def test_keys_are_fetched_once_and_again_for_a_rotated_key_at_most_every_10_s(
    idp: IdentityProvider,
) -> None:
    clock = Clock()
    check = verifier(idp, clock)
    fetched = idp.jwks_requests
    for _ in range(3):
        check.verify(idp.token(), rules(idp))
    assert idp.jwks_requests == fetched + 1

    rotated = idp.rotate()
    clock.now += 1  # within the refresh interval: a made-up kid must not trigger fetches
    with pytest.raises(TokenRejectedError, match="does not publish"):
        check.verify(idp.token(kid=rotated), rules(idp))
    assert idp.jwks_requests == fetched + 1
    clock.now += MIN_REFRESH_INTERVAL_S
    assert check.verify(idp.token(kid=rotated), rules(idp))
    assert idp.jwks_requests == fetched + 2


def test_cached_keys_are_used_while_the_provider_cannot_be_reached(idp: IdentityProvider) -> None:
    clock = Clock()
    answers: list[Any] = [idp.jwks()]

    def fetch(url: str) -> dict[str, Any]:
        answer = answers[-1]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    check = TokenVerifier(JwksCache(idp.jwks_url, fetch, max_age_s=60, clock=clock))
    assert check.verify(idp.token(), rules(idp))
    answers.append(IdentityProviderUnavailableError("connection refused"))
    clock.now += 3600  # the keys are stale and cannot be fetched again: keep using them

    assert check.verify(idp.token(), rules(idp))


def test_without_any_keys_no_token_can_be_checked(idp: IdentityProvider) -> None:
    def fetch(url: str) -> dict[str, Any]:
        raise IdentityProviderUnavailableError("connection refused")

    check = TokenVerifier(JwksCache(idp.jwks_url, fetch, max_age_s=60, clock=Clock()))
    with pytest.raises(IdentityProviderUnavailableError):
        check.verify(idp.token(), rules(idp))
