package mariadb

import "errors"

// Freeze stops the server process with SIGSTOP, as a hung server: the kernel
// still accepts TCP connections to it, but nothing answers, so clients wait
// until their own timeouts. [Server.Thaw] lets it go on; [Server.Stop] and
// [Server.Kill] work on a frozen server. Freeze fails if the server is not
// running, and is Linux-only.
func (s *Server) Freeze() error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if s.cmd == nil || isClosed(s.exited) {
		return errors.New("mariadb: Freeze of a server that is not running")
	}
	if err := freeze(s.cmd.Process); err != nil {
		return err
	}
	s.setFrozen(true)
	return nil
}

// Thaw lets a frozen server go on with SIGCONT. It does nothing to a server
// that is not frozen.
func (s *Server) Thaw() error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if !s.frozen || s.cmd == nil || isClosed(s.exited) {
		s.setFrozen(false)
		return nil
	}
	if err := thaw(s.cmd.Process); err != nil {
		return err
	}
	s.setFrozen(false)
	return nil
}

func (s *Server) isFrozen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.frozen
}

// setFrozen records whether the process is stopped. s.ops must be held.
func (s *Server) setFrozen(frozen bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frozen = frozen
}
