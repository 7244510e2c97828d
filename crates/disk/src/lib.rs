//! Backup disk lifecycle: udev hot-plug, UDisks2 unlock and mount, key stick, mount guard
