//! SSH transport (russh): host-key policy, exec channels, SFTP source
