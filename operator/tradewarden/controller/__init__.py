"""The kopf controller: TradingAccount lifecycle, per-account supervisors, status and Events.

``kopf run -m tradewarden.controller.handlers`` or ``tradewarden run``.
"""
