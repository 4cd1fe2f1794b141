"""The control API's routes, one ``APIRouter`` per group; ``appliance.control.api.create_app`` includes them.

Every route gets the :class:`~appliance.control.context.ControlContext` through ``Depends`` (``Ctx``) and
every ``/v1`` route but health is behind ``authorize``.
"""
