"""boto3's failures as one line each, with what to do: for `chat-ops` and `make deploy` alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..store import StoreThrottled
from . import OpsError

#: Codes with which AWS refuses the credentials themselves (not the request).
_BAD_CREDENTIALS = ("InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException")


@contextmanager
def aws_errors(where: str) -> Iterator[None]:
    """Unreachable, no credentials or region, refused, throttled: an OpsError naming `where`."""
    from botocore import exceptions as e

    try:
        yield
    except OpsError:
        raise
    except e.NoCredentialsError:
        raise OpsError("no AWS credentials found: run `aws configure` (or `aws sso login`), or set AWS_PROFILE") from None
    except e.NoRegionError:
        raise OpsError("no AWS region chosen: set AWS_REGION (e.g. AWS_REGION=eu-central-1), or pass the region "
                       "(--region; REGION=... to make deploy)") from None
    except e.ProfileNotFound as exc:
        raise OpsError(f"{exc}: check AWS_PROFILE") from None
    except (e.EndpointConnectionError, e.ConnectTimeoutError) as exc:
        raise OpsError(f"cannot reach {where} ({exc}): check the URL or region, and the network") from None
    except StoreThrottled as exc:
        raise OpsError(f"{where} is throttling requests ({exc}); try again in a minute") from None
    except e.ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        if code in _BAD_CREDENTIALS:
            raise OpsError(f"AWS refused the credentials ({code}): renew them (aws configure, aws sso login)") from None
        raise OpsError(f"{where} refused: {code}: {error.get('Message', '')}".rstrip(": ")) from None
    except e.BotoCoreError as exc:  # an expired SSO token, a broken config file, ...
        raise OpsError(f"{where}: {exc}") from None
