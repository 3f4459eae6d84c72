"""Deployment profiles, including the built-in "Do Not Deploy" and the default profile."""
from __future__ import annotations

from sqlalchemy import func, select, update

from cds.extensions import db
from cds.models import DO_NOT_DEPLOY, DeploymentProfile, User


class ProfileError(Exception):
    """A profile cannot be changed as asked; the message says why."""


class ProfileInUse(ProfileError):
    def __init__(self, profile: DeploymentProfile, count: int):
        super().__init__(f"The profile {profile.name!r} is used by {count} "
                         f"user{'s' if count != 1 else ''}; assign them another profile first.")
        self.profile, self.count = profile, count


def ensure_builtin_profiles() -> None:
    """Every instance has "Do Not Deploy" and a default profile."""
    changed = False
    if not db.session.scalar(select(DeploymentProfile.id).where(DeploymentProfile.is_do_not_deploy)):
        db.session.add(DeploymentProfile(
            name=DO_NOT_DEPLOY, is_do_not_deploy=True,
            description="Users on this profile are never sent a deployment."))
        changed = True
    if not db.session.scalar(select(DeploymentProfile.id).where(DeploymentProfile.is_default)):
        existing = db.session.scalar(select(DeploymentProfile).where(
            DeploymentProfile.is_do_not_deploy.is_(False)).order_by(DeploymentProfile.id))
        if existing is None:
            existing = DeploymentProfile(name="Default", description="Profile for new users.")
            db.session.add(existing)
        existing.is_default = True
        changed = True
    if changed:
        db.session.commit()


def default_profile() -> DeploymentProfile:
    profile = db.session.scalar(select(DeploymentProfile).where(DeploymentProfile.is_default))
    if profile is None:
        ensure_builtin_profiles()
        profile = db.session.scalar(select(DeploymentProfile).where(DeploymentProfile.is_default))
    return profile


def all_profiles() -> list[DeploymentProfile]:
    return list(db.session.scalars(select(DeploymentProfile).order_by(
        DeploymentProfile.is_do_not_deploy, DeploymentProfile.name)))


def get_profile(profile_id: int) -> DeploymentProfile:
    profile = db.session.get(DeploymentProfile, profile_id)
    if profile is None:
        raise ProfileError(f"Deployment profile {profile_id} does not exist.")
    return profile


def find_profile_by_name(name: str) -> DeploymentProfile | None:
    return db.session.scalar(select(DeploymentProfile).where(
        func.lower(DeploymentProfile.name) == name.strip().lower()))


def user_counts() -> dict[int, int]:
    rows = db.session.execute(select(User.profile_id, func.count()).group_by(User.profile_id))
    return {pid: n for pid, n in rows}


def set_default(profile: DeploymentProfile) -> None:
    if profile.is_do_not_deploy:
        raise ProfileError("\"Do Not Deploy\" cannot be the default profile for new users.")
    db.session.execute(update(DeploymentProfile).values(is_default=False))
    profile.is_default = True
    db.session.commit()
