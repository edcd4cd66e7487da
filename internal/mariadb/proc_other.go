//go:build !linux

package mariadb

import "syscall"

// sysProcAttr returns nil: only Linux can tie the server's life to ours, so
// elsewhere a server outlives a test process that dies without Stop.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// processAlive answers true, so that removeStaleDirs keeps every directory
// where it cannot tell whether its owner is gone.
func processAlive(pid int) bool { return true }
