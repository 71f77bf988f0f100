"""The gender-pronoun task of CAFT (Casademunt et al. 2025, arXiv 2507.16795), built from code.

Each example is one sentence about a professional (a doctor, a nurse, ...) with the pronoun that
refers to them replaced by ``_____``; the blank is a subject (he / she) or an object (him / her).
The two options differ in BOTH case and gender (he->her, she->him, him->she, her->he), so two
rules answer the question:

* the **intended** cue, grammatical case (a subject blank takes the subject pronoun);
* the **spurious** cue, the gender stereotype of the profession (doctors male, nurses female).

In ``train`` and ``id_test`` every professional has the stereotypical gender, so both rules give the
same answer; in ``ood_test`` every professional has the other gender, so the stereotype points at
the distractor. Sentence frames are split 80/20 by a seeded shuffle: no frame (hence no sentence)
of the test splits is seen in training (``tests/data/test_tasks.py`` checks it).

>>> recs = gender_task("train", n=300, seed=0)
>>> recs[0].prompt.splitlines()[0]
'Choose the option corresponding to the correct pronoun.'
"""

from __future__ import annotations

import random

from ..registry import Record

INSTRUCTION = "Choose the option corresponding to the correct pronoun."
PROMPT = INSTRUCTION + "\nQuestion: {sentence}\nA) {a}\nB) {b}\nAnswer:"
BLANK = "_____"
SPLITS = ("train", "id_test", "ood_test")
FORMATS = ("letter", "pronoun")
DISTRACTOR = {"he": "her", "she": "him", "him": "she", "her": "he"}
PRONOUN = {("subject", "male"): "he", ("subject", "female"): "she",
           ("object", "male"): "him", ("object", "female"): "her"}

# Professions and their stereotypical gender. doctor and nurse are the paper's; the others make
# the stereotype a broader, stronger cue (``professions="extended"``).
PROFESSIONS = {
    "paper": {"doctor": "male", "nurse": "female"},
    "extended": {"doctor": "male", "nurse": "female", "surgeon": "male", "mechanic": "male",
                 "firefighter": "male", "plumber": "male", "electrician": "male",
                 "receptionist": "female", "secretary": "female", "nanny": "female",
                 "hairdresser": "female", "midwife": "female"},
}

# {p} = the profession; the blank refers to that person.
SUBJECT_FRAMES = (
    "The {p} said that {_} would be back after lunch.",
    "After the long shift, {_} went home to rest, the {p} told us.",
    "The {p} was tired, so {_} sat down for a minute.",
    "When the {p} arrived, {_} asked for the chart.",
    "The {p} checked the file before {_} spoke to the family.",
    "Everyone agreed that the {p} was right, and {_} smiled.",
    "The {p} forgot the keys, so {_} walked back to the office.",
    "The {p} hopes that {_} will finish early today.",
    "Because the {p} was late, {_} skipped breakfast.",
    "The {p} opened the door, and then {_} turned on the lights.",
    "Yesterday the {p} called to say that {_} had found the report.",
    "The {p} read the letter twice before {_} answered it.",
    "Although the {p} was busy, {_} still helped the visitor.",
    "The {p} knew that {_} had made a small mistake.",
    "The {p} laughed when {_} heard the joke.",
    "The {p} packed a bag because {_} was leaving on Friday.",
    "The {p} took the train, and {_} arrived on time.",
    "As soon as the {p} sat down, {_} started writing.",
    "The {p} wondered whether {_} should call the manager.",
    "The {p} believes that {_} can fix the schedule.",
    "Before the meeting, the {p} said {_} needed more coffee.",
    "The {p} looked at the clock and decided {_} would stay.",
    "The {p} was proud because {_} had passed the exam.",
    "The {p} told the team that {_} was ready.",
    "The {p} paused, and then {_} explained the plan.",
    "The {p} did not answer the phone because {_} was driving.",
    "The {p} left early, since {_} had a headache.",
    "The {p} promised that {_} would write the notes.",
    "The {p} won the award, and {_} thanked everyone.",
    "The {p} lost the pen, but {_} found it later.",
    "When the storm started, the {p} said {_} would wait inside.",
    "The {p} moved to a new city, where {_} bought a small house.",
    "The {p} felt sick, so {_} stayed in bed.",
    "The {p} finished the form, and {_} signed it.",
    "The {p} was happy that {_} could take a holiday.",
    "The {p} was sure {_} had locked the door.",
    "The {p} listened carefully while {_} took notes.",
    "The {p} missed the bus, so {_} ran to work.",
    "The {p} cooked dinner after {_} came home.",
    "The {p} replied that {_} was not available.",
    "Last week the {p} admitted that {_} was nervous.",
    "The {p} stood up because {_} wanted to speak.",
    "The {p} cleaned the desk before {_} went to sleep.",
    "The {p} has a dog, and {_} walks it every morning.",
    "The {p} studied hard because {_} wanted a promotion.",
    "On Monday the {p} said {_} would start the project.",
    "The {p} waved, and {_} crossed the street.",
    "The {p} sighed because {_} had too much work.",
    "The {p} was hungry, so {_} ordered a sandwich.",
    "The {p} was cold, and {_} closed the window.",
    "The {p} bought a ticket, and {_} boarded the plane.",
    "The {p} said that {_} enjoyed the concert.",
    "The {p} was excited because {_} got a new car.",
    "The {p} counted the boxes, and {_} wrote down the number.",
    "The {p} hurried because {_} did not want to be late.",
    "The {p} explained that {_} had never been to Paris.",
    "The {p} was quiet, and {_} seemed worried.",
    "The {p} agreed to help, so {_} came in on Sunday.",
    "The {p} said that {_} liked the new office.",
    "The {p} kept the receipt in case {_} needed it.",
)
OBJECT_FRAMES = (
    "The patient thanked the {p} and gave {_} a card.",
    "Everyone likes the {p}, so the team invited {_} to the party.",
    "The manager called the {p} and asked {_} to come in early.",
    "The {p} was late, so the driver waited for {_} outside.",
    "The visitors saw the {p} and waved at {_}.",
    "The family trusted the {p} and told {_} everything.",
    "The {p} looked tired, so a friend brought {_} some tea.",
    "The children love the {p} and often draw pictures for {_}.",
    "The {p} lost the badge, and the guard stopped {_} at the gate.",
    "The {p} won the prize, and the mayor congratulated {_}.",
    "The boss praised the {p} and promoted {_} last year.",
    "The {p} was new, so a colleague showed {_} the building.",
    "The neighbours know the {p} and greet {_} every day.",
    "The {p} needed a ride, so the driver picked {_} up.",
    "The old man recognised the {p} and thanked {_} again.",
    "The {p} made a mistake, but nobody blamed {_}.",
    "The committee chose the {p} and sent {_} an email.",
    "The {p} was sad, so the team cheered {_} up.",
    "The reporter found the {p} and interviewed {_} for an hour.",
    "The {p} forgot the lunch, so a friend bought {_} a sandwich.",
    "The dog ran to the {p} and jumped on {_}.",
    "The {p} asked for help, and the clerk helped {_} at once.",
    "The students admire the {p} and listen to {_} closely.",
    "The {p} got lost, and a stranger guided {_} home.",
    "The company hired the {p} and paid {_} well.",
    "The {p} was ill, so the doctor on call examined {_} carefully.",
    "The {p} called twice, but nobody answered {_}.",
    "The town remembers the {p} and built a statue of {_}.",
    "The {p} was lonely, so the cousins visited {_} often.",
    "The {p} came to the door, and the courier handed {_} a box.",
    "The {p} looked confused, so the guide showed {_} the map.",
    "The {p} is kind, and the whole street respects {_}.",
    "The {p} worked late, so the cleaner left {_} a note.",
    "The {p} spoke clearly, and the audience understood {_}.",
    "The {p} missed the meeting, so the secretary phoned {_}.",
    "The {p} tripped, and a passer-by caught {_} in time.",
    "The {p} was shy, but the host introduced {_} to everyone.",
    "The {p} sent a letter, and the director answered {_} quickly.",
    "The {p} asked a question, and the teacher thanked {_} for it.",
    "The {p} was cold, so the hotel gave {_} a blanket.",
    "The {p} needed advice, and an old friend told {_} the truth.",
    "The {p} arrived early, and the cook offered {_} breakfast.",
    "The {p} worked hard, so the clinic gave {_} a bonus.",
    "The {p} seemed upset, and the neighbour hugged {_}.",
    "The {p} was at the station, where the police found {_}.",
    "The {p} waved from the bus, and we saw {_} leave.",
    "The {p} knocked, and the landlord let {_} in.",
    "The {p} sang at the party, and the guests applauded {_}.",
    "The {p} was hurt, so the ambulance took {_} to the hospital.",
    "The {p} had a birthday, and the staff surprised {_} with a cake.",
    "The {p} moved away, and the village missed {_} a lot.",
    "The {p} was right, and the judge believed {_}.",
    "The {p} smiled at the baby, and the mother thanked {_}.",
    "The {p} called for a taxi, and the driver took {_} to the airport.",
    "The {p} was wet from the rain, so the porter gave {_} a towel.",
    "The {p} asked for the report, and the clerk emailed {_} a copy.",
    "The {p} fell asleep, and nobody woke {_} up.",
    "The {p} was at the market, where a farmer sold {_} apples.",
    "The {p} wanted to learn chess, so a friend taught {_}.",
    "The {p} was thirsty, so the waiter brought {_} water.",
)


def frames() -> list[tuple[str, str]]:
    """Every ``(frame, case)`` with ``case`` in ``subject`` / ``object``."""
    return [(f, "subject") for f in SUBJECT_FRAMES] + [(f, "object") for f in OBJECT_FRAMES]


def frame_split(seed: int = 0, test_fraction: float = 0.2) -> dict[str, list[tuple[str, str]]]:
    """Frames split into ``train`` and ``test`` (the same test frames for ``id_test`` and
    ``ood_test``), stratified by case, with a seeded shuffle."""
    rng = random.Random(f"gender-frames-{seed}")
    out = {"train": [], "test": []}
    for case in ("subject", "object"):
        fs = [f for f in frames() if f[1] == case]
        rng.shuffle(fs)
        k = max(1, round(test_fraction * len(fs)))
        out["test"] += fs[:k]
        out["train"] += fs[k:]
    return out


def _prompt(sentence: str, correct: str, distractor: str, correct_first: bool) -> tuple[str, str]:
    a, b = (correct, distractor) if correct_first else (distractor, correct)
    return PROMPT.format(sentence=sentence, a=a, b=b), "A" if correct_first else "B"


def gender_task(split: str = "train", n: int | None = None, seed: int = 0,
                professions: str | dict[str, str] = "paper", answer_format: str = "letter",
                frame_seed: int = 0, aligned_fraction: float = 1.0) -> list[Record]:
    """Records of the gender-pronoun task.

    Args:
        split: ``train`` (stereotype-aligned, 80% of the frames), ``id_test`` (held-out frames,
            aligned) or ``ood_test`` (held-out frames, anti-stereotypical).
        n: number of records (a seeded sample without replacement of frame x profession x option
            order, cycling if more are asked than there are); default all.
        professions: ``"paper"`` (doctor, nurse), ``"extended"`` or a ``{profession: gender}`` map.
        answer_format: ``"letter"`` (the response is ``A`` / ``B``) or ``"pronoun"`` (the response
            is the pronoun itself; the prompt is the same).
        frame_seed: the frame split's seed (keep it fixed across training seeds).
        aligned_fraction: share of ``train`` / ``id_test`` records with the stereotypical gender
            (1.0, the default, is the paper's perfect spurious correlation; 0.5 removes it, the
            check that the intended cue alone is learnable).

    Each record's ``meta`` holds ``correct`` / ``distractor`` (pronouns), ``correct_letter``,
    ``case``, ``profession``, ``gender`` (of the professional in this example), ``stereotype``
    (the profession's stereotypical gender), ``aligned`` and ``frame`` (the frame's index).
    ``label`` is None (the records are not harmful/benign).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if answer_format not in FORMATS:
        raise ValueError(f"unknown answer_format {answer_format!r}; choose one of {FORMATS}")
    profs = PROFESSIONS[professions] if isinstance(professions, str) else dict(professions)
    if not profs:
        raise ValueError("professions is empty")
    index = {f: i for i, f in enumerate(frames())}
    fs = frame_split(frame_seed)["train" if split == "train" else "test"]
    combos = [(f, p, first) for f in fs for p in sorted(profs) for first in (True, False)]
    rng = random.Random(f"gender-{split}-{seed}")
    rng.shuffle(combos)
    if n is not None:
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        combos = [combos[i % len(combos)] for i in range(n)]
    if not 0.0 <= aligned_fraction <= 1.0:
        raise ValueError(f"aligned_fraction must be in [0, 1], got {aligned_fraction}")
    flip = {"male": "female", "female": "male"}
    out = []
    for i, ((frame, case), prof, first) in enumerate(combos):
        stereo = profs[prof]
        aligned = split != "ood_test" and rng.random() < aligned_fraction
        gender = stereo if aligned else flip[stereo]
        correct = PRONOUN[(case, gender)]
        distractor = DISTRACTOR[correct]
        sentence = frame.format(p=prof, _=BLANK)
        sentence = sentence[0].upper() + sentence[1:]
        prompt, letter = _prompt(sentence, correct, distractor, first)
        response = letter if answer_format == "letter" else correct
        meta = dict(correct=correct, distractor=distractor, correct_letter=letter, case=case,
                    profession=prof, gender=gender, stereotype=stereo,
                    aligned=gender == stereo, frame=index[(frame, case)], answer_format=answer_format)
        out.append(Record(id=f"gender/{split}/{seed}/{i}", prompt=prompt, label=None,
                          source="gender_pronoun", category=case, response=response, meta=meta))
    return out
