"""The names of the report properties that carry the plugin's results to the controller (under
xdist too, as junitxml's properties do). A module of its own: the controller checks them on every
test report of every session, and must not import the evaluation machinery for that."""

TEST_PROPERTY = "modelreg_test"
VERDICT_PROPERTY = "modelreg_verdict"
EVALUATION_PROPERTY = "modelreg_evaluation"
FLAT_TEST_PROPERTY = "modelreg.test"  # the same, once flattened for JUnit XML
