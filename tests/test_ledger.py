"""The episode ledger by hand: requeued prompts come back first, in order, in their own epoch; the books
balance; a prompt completed twice in one epoch is counted; a saved ledger goes on exactly where it was."""

import json

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


def test_a_saved_ledger_goes_on_where_it_was_with_in_flight_prompts_handed_out_again():
    led = Ledger([f"p{i}" for i in range(5)], seed=3)
    t0, a = led.take(2)
    led.complete(t0)
    t1, b = led.take(2)  # in flight when the run stops
    t2, c = led.take(2)  # wraps into epoch 2
    state = json.loads(json.dumps(led.state_dict()))  # as a checkpoint stores it
    back = Ledger.from_state(state)
    assert back.take(4)[1] == b + c  # the in-flight prompts first, in order
    led.requeue(t2)
    led.requeue(t1)  # what the original would do with its lost calls
    assert led.take(4)[1] == b + c
    assert back.take(5)[1] == led.take(5)[1]  # the same shuffles after that (the RNG came along)
    assert back.counts() == led.counts() and back.epoch == led.epoch
