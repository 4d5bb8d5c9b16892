package mailbox

import "testing"

func TestTheReceiverSeesOnlyTheNewestValue(t *testing.T) {
	m := New[int]()
	for i := range 5 {
		m.Send(i) // never blocks
	}
	if v := <-m.C(); v != 4 {
		t.Errorf("received %d, want the newest, 4", v)
	}
	select {
	case v := <-m.C():
		t.Errorf("received %d again, want nothing waiting", v)
	default:
	}
}
