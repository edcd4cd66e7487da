//go:build !linux

package mariadb

import (
	"errors"
	"os"
	"syscall"
)

// sysProcAttr returns nil: only Linux can tie the server's life to ours, so
// elsewhere a server outlives a test process that dies without Stop.
// StartGalera, the only user of runAs, refuses to run off Linux.
func sysProcAttr(runAs *account) *syscall.SysProcAttr { return nil }

// processAlive answers true, so that removeStaleDirs keeps every directory
// where it cannot tell whether its owner is gone.
func processAlive(pid int) bool { return true }

var errNotLinux = errors.New("mariadb: only supported on Linux")

// freeze and thaw are Linux-only here (SIGSTOP and SIGCONT).
func freeze(p *os.Process) error { return errNotLinux }
func thaw(p *os.Process) error   { return errNotLinux }
