"""Makes the fakekube fixtures available to this folder's tests."""

from .fixtures import fake_api, fake_api_client, fake_core_v1, fake_kubelet

__all__ = ["fake_api", "fake_api_client", "fake_core_v1", "fake_kubelet"]
