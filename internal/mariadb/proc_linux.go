package mariadb

import (
	"errors"
	"syscall"
)

// sysProcAttr makes the kernel send SIGKILL to the server when the thread
// that started it exits; see startFromLockedThread for why that thread
// lives as long as the process.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// processAlive reports whether a process with this pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
