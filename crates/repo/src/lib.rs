//! restic-format repository via rustic_core: init, backup, snapshots, restore, forget, prune, check
