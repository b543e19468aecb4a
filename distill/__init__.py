"""Quality regressor and distillation of the student from the teacher's pairs."""
