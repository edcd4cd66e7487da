//go:build linux

package keystore_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuTimes is the CPU time used so far by this test binary and by the
// MariaDB server it started (zero when the server is not its child, e.g.
// with KEYSTORE_TEST_DSN). It says which side a difference in wall time
// comes from.
func cpuTimes() (client, server time.Duration) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		client = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return client, childServerCPU()
}

// childServerCPU sums user and system time of this process's mariadbd
// children, from /proc/PID/stat (in clock ticks of 10 ms on Linux).
func childServerCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	parent := strconv.Itoa(os.Getpid())
	var ticks int64
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || !strings.HasPrefix(s[open+1:end], "mariadbd") && !strings.HasPrefix(s[open+1:end], "mysqld") {
			continue
		}
		// Fields after the command: state ppid ... utime(14) stime(15).
		f := strings.Fields(s[end+1:])
		if len(f) < 13 || f[1] != parent {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
