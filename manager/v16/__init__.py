"""OCPP 1.6 (with the security extension) handlers, assembled for the 1.6 router.

``HANDLERS`` maps each station-initiated action to its handler; ``RESULT_HANDLERS`` maps
CSMS-initiated actions whose answers need more than the router's generic logging.
"""

from __future__ import annotations

from manager.context import CallHandler, ResultHandler
from manager.v16.handlers import (
    authorize,
    boot_notification,
    data_transfer,
    diagnostics_status_notification,
    firmware_status_notification,
    heartbeat,
    log_status_notification,
    meter_values,
    security_event_notification,
    sign_certificate,
    signed_firmware_status_notification,
    start_transaction,
    status_notification,
    stop_transaction,
)
from manager.v16.results import (
    certificate_signed,
    change_configuration,
    delete_certificate,
    get_configuration,
    get_installed_certificate_ids,
    get_local_list_version,
    install_certificate,
    send_local_list,
)
from manager.v16.results import (
    data_transfer as data_transfer_result,
)

HANDLERS: dict[str, CallHandler] = {
    authorize.ACTION: authorize.handle,
    boot_notification.ACTION: boot_notification.handle,
    data_transfer.ACTION: data_transfer.handle,
    diagnostics_status_notification.ACTION: diagnostics_status_notification.handle,
    firmware_status_notification.ACTION: firmware_status_notification.handle,
    heartbeat.ACTION: heartbeat.handle,
    log_status_notification.ACTION: log_status_notification.handle,
    meter_values.ACTION: meter_values.handle,
    security_event_notification.ACTION: security_event_notification.handle,
    sign_certificate.ACTION: sign_certificate.handle,
    signed_firmware_status_notification.ACTION: signed_firmware_status_notification.handle,
    start_transaction.ACTION: start_transaction.handle,
    status_notification.ACTION: status_notification.handle,
    stop_transaction.ACTION: stop_transaction.handle,
}

RESULT_HANDLERS: dict[str, ResultHandler] = {
    certificate_signed.ACTION: certificate_signed.handle_result,
    change_configuration.ACTION: change_configuration.handle_result,
    data_transfer_result.ACTION: data_transfer_result.handle_result,
    delete_certificate.ACTION: delete_certificate.handle_result,
    get_configuration.ACTION: get_configuration.handle_result,
    get_installed_certificate_ids.ACTION: get_installed_certificate_ids.handle_result,
    get_local_list_version.ACTION: get_local_list_version.handle_result,
    install_certificate.ACTION: install_certificate.handle_result,
    send_local_list.ACTION: send_local_list.handle_result,
}

__all__ = ["HANDLERS", "RESULT_HANDLERS"]
