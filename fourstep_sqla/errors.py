"""The exception hierarchy of fourstep_sqla.

Every error the library raises derives from :class:`FourStepError`. Messages
say what happened, to which model/table/column/key, and what to do next, so a
deploy log is enough to act on.
"""

from __future__ import annotations

__all__ = [
    "BackfillError",
    "DeclarationError",
    "ExternalTransactionError",
    "FourStepError",
    "FourStepWarning",
    "InconsistentWriteError",
    "NewColumnDefaultError",
    "NoSyncTriggersWarning",
    "OldColumnNotNullError",
    "OldColumnStillMappedError",
    "PhaseError",
    "RegistryError",
    "SQLTransformRequiredError",
    "SyncTriggerError",
    "TransformArityError",
    "TransformError",
    "UnknownColumnError",
]


class FourStepError(Exception):
    """Base class of every error raised by fourstep_sqla."""


class FourStepWarning(UserWarning):
    """Base class of every warning emitted by fourstep_sqla."""


class DeclarationError(FourStepError):
    """A phased attribute is declared in a way that cannot work.

    Raised when the model is mapped (class creation), not at the first query.
    """


class UnknownColumnError(DeclarationError):
    """``old=`` or ``new=`` names an attribute the model does not have."""


class TransformArityError(DeclarationError):
    """A transform's arguments or results do not match the columns."""


class OldColumnStillMappedError(DeclarationError):
    """Step 4 is declared while the old column is still an ORM attribute."""


class OldColumnNotNullError(DeclarationError):
    """Step 4 stops writing an old column that is NOT NULL without a default."""


class NewColumnDefaultError(DeclarationError):
    """A new column is NOT NULL, or has a non-NULL server default.

    Until the backfill, "every new column NULL" is how a row says it has not
    been written in the new shape: a value the database puts there by itself
    would hide the old value from step-2 reads and from the backfill.
    """


class NoSyncTriggersWarning(FourStepWarning):
    """A phased attribute's transforms have no SQL form, so no database
    triggers can keep old and new in step for writers outside the ORM."""


class SyncTriggerError(FourStepError):
    """The database sync triggers of a phased attribute cannot be created or used."""


class PhaseError(FourStepError):
    """A phase was requested that this attribute cannot be in."""


class SQLTransformRequiredError(FourStepError):
    """A SQL form of a transform is needed but only a Python one was given."""


class TransformError(FourStepError):
    """A transform raised, or returned a value of the wrong shape."""


class InconsistentWriteError(FourStepError):
    """Both the old and the new place were written, with values that disagree."""


class RegistryError(FourStepError):
    """A registry key is unknown or claimed twice."""


class BackfillError(FourStepError):
    """A backfill could not finish; nothing of the failing batch was written."""


class ExternalTransactionError(BackfillError):
    """The backfill was handed a connection already inside a transaction."""
