"""The profile: /etc/mipart/profile.yaml, its v1 schema and its validation."""

from mipart.profile.load import check_profile, load_profile
from mipart.profile.schema import Profile, ServiceSpec

__all__ = ["load_profile", "check_profile", "Profile", "ServiceSpec"]
