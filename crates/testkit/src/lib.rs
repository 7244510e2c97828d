//! Test helpers: private sshd on 127.0.0.1, local HTTP ping server, fixtures
