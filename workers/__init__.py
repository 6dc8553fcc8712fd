"""Background job entry points (arq). They call into `service`; `service` never imports them."""
