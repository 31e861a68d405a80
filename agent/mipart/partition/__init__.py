"""The partition engine: plan (pure), apply/assert/export (effects on sysfs and the driver)."""
