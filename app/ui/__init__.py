"""The tray app (Qt only): a worker thread that owns the engine, the tray icon and its menu, the dashboard,
the settings dialog. Widgets render what `presenter` made of the latest immutable snapshot and send commands
back; they never reach into core objects."""
