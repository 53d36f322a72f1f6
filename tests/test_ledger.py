"""The episode ledger by hand: requeued prompts come back first, in order, in their own epoch; the books
balance; a prompt completed twice in one epoch is counted."""

from cluster.ledger import Ledger


def test_requeue_hands_the_same_prompts_out_first_and_the_books_balance():
    led = Ledger(["a", "b", "c"], seed=0)
    t0, first = led.take(2)
    t1, second = led.take(2)  # wraps: one prompt of epoch 1, one of epoch 2
    assert len(set(first + second[:1])) == 3 and led.epoch == 2
    led.requeue(t1)  # its actor died
    led.complete(t0)
    t2, again = led.take(2)
    assert again == second and led.epoch == 2  # the lost prompts, in order, before anything new
    led.complete(t2)
    c = led.counts()
    assert (c["ledger/handed_out"], c["ledger/done"], c["ledger/requeued"], c["ledger/in_flight"]) == (6, 4, 2, 0)
    assert c["ledger/duplicated"] == 0 and led.done_in_epoch(1) == 3 and led.done_in_epoch(2) == 1


def test_a_prompt_done_twice_in_one_epoch_is_counted():
    led = Ledger(["a"], seed=0)
    t0, _ = led.take(1)
    led.complete(t0)
    led.in_flight[7] = [(1, "a")]  # a driver bug: epoch 1's prompt handed out again
    led.handed_out += 1
    led.complete(7)
    assert led.counts()["ledger/duplicated"] == 1 and led.done_in_epoch(1) == 1
