package mariadb

import (
	"errors"
	"os"
	"syscall"
)

// sysProcAttr makes the kernel send SIGKILL to the server when the thread
// that started it exits; see startFromLockedThread for why that thread
// lives as long as the process. With runAs, the server runs as that user:
// Go switches credentials before it sets the parent-death signal (which a
// later setuid, such as mariadbd's own --user, would clear).
func sysProcAttr(runAs *account) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if runAs != nil {
		attr.Credential = &syscall.Credential{
			Uid:    uint32(runAs.uid),
			Gid:    uint32(runAs.gid),
			Groups: []uint32{}, // drop our supplementary groups
		}
	}
	return attr
}

// processAlive reports whether a process with this pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// freeze stops p with SIGSTOP; thaw lets it go on with SIGCONT.
func freeze(p *os.Process) error { return p.Signal(syscall.SIGSTOP) }
func thaw(p *os.Process) error   { return p.Signal(syscall.SIGCONT) }
