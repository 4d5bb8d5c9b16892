package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// process is a program the sandbox started inside a namespace.
type process struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

// start runs bin with args inside namespace ns, with its output appended to
// logPath.
func (c *Cluster) start(ns, logPath, bin string, args ...string) (*process, error) {
	return c.startEnv(ns, logPath, nil, bin, args...)
}

// startEnv is start with env added to the environment.
func (c *Cluster) startEnv(ns, logPath string, env []string, bin string, args ...string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	if c.opts.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		// ip netns exec execs bin in place, so the signal reaches it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", bin, ns, err)
	}
	p := &process{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitForOutput waits until the process writes line to its log.
func (p *process) waitForOutput(ctx context.Context, line string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(p.logPath)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.TrimSpace(l) == line {
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("exited before printing %q:\n%s", line, tailFile(p.logPath, 2000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("did not print %q within %v", line, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends sig and waits for the process to exit, killing it after 10 s.
func (p *process) stop(sig syscall.Signal) {
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}
