"""OCPP 2.0.1 handlers, assembled for the 2.0.1 router.

``HANDLERS`` maps each station-initiated action to its handler; ``RESULT_HANDLERS`` maps
CSMS-initiated actions whose answers need more than the router's generic logging.
"""

from __future__ import annotations

from manager.context import CallHandler, ResultHandler
from manager.v201.handlers import (
    authorize,
    boot_notification,
    cleared_charging_limit,
    data_transfer,
    firmware_status_notification,
    get15118_ev_certificate,
    get_certificate_status,
    heartbeat,
    log_status_notification,
    meter_values,
    notify_charging_limit,
    notify_customer_information,
    notify_display_messages,
    notify_ev_charging_needs,
    notify_ev_charging_schedule,
    notify_event,
    notify_monitoring_report,
    notify_report,
    publish_firmware_status_notification,
    report_charging_profiles,
    reservation_status_update,
    security_event_notification,
    sign_certificate,
    status_notification,
    transaction_event,
)
from manager.v201.results import (
    certificate_signed,
    delete_certificate,
    get_installed_certificate_ids,
    get_local_list_version,
    get_variables,
    install_certificate,
    send_local_list,
    set_network_profile,
    set_variables,
)

HANDLERS: dict[str, CallHandler] = {
    authorize.ACTION: authorize.handle,
    boot_notification.ACTION: boot_notification.handle,
    cleared_charging_limit.ACTION: cleared_charging_limit.handle,
    data_transfer.ACTION: data_transfer.handle,
    firmware_status_notification.ACTION: firmware_status_notification.handle,
    get15118_ev_certificate.ACTION: get15118_ev_certificate.handle,
    get_certificate_status.ACTION: get_certificate_status.handle,
    heartbeat.ACTION: heartbeat.handle,
    log_status_notification.ACTION: log_status_notification.handle,
    meter_values.ACTION: meter_values.handle,
    notify_charging_limit.ACTION: notify_charging_limit.handle,
    notify_customer_information.ACTION: notify_customer_information.handle,
    notify_display_messages.ACTION: notify_display_messages.handle,
    notify_ev_charging_needs.ACTION: notify_ev_charging_needs.handle,
    notify_ev_charging_schedule.ACTION: notify_ev_charging_schedule.handle,
    notify_event.ACTION: notify_event.handle,
    notify_monitoring_report.ACTION: notify_monitoring_report.handle,
    notify_report.ACTION: notify_report.handle,
    publish_firmware_status_notification.ACTION: publish_firmware_status_notification.handle,
    report_charging_profiles.ACTION: report_charging_profiles.handle,
    reservation_status_update.ACTION: reservation_status_update.handle,
    security_event_notification.ACTION: security_event_notification.handle,
    sign_certificate.ACTION: sign_certificate.handle,
    status_notification.ACTION: status_notification.handle,
    transaction_event.ACTION: transaction_event.handle,
}

RESULT_HANDLERS: dict[str, ResultHandler] = {
    certificate_signed.ACTION: certificate_signed.handle_result,
    delete_certificate.ACTION: delete_certificate.handle_result,
    get_installed_certificate_ids.ACTION: get_installed_certificate_ids.handle_result,
    get_local_list_version.ACTION: get_local_list_version.handle_result,
    get_variables.ACTION: get_variables.handle_result,
    install_certificate.ACTION: install_certificate.handle_result,
    send_local_list.ACTION: send_local_list.handle_result,
    set_network_profile.ACTION: set_network_profile.handle_result,
    set_variables.ACTION: set_variables.handle_result,
}

__all__ = ["HANDLERS", "RESULT_HANDLERS"]
